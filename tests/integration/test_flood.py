"""Idle connections to a worker's port, from anyone who reaches it (no key needed): the
worker keeps serving its Mains."""

from __future__ import annotations

import resource
import shutil
import socket

import pytest

from tests.helpers import TASKS, Workspace
from tests.integration.test_keys import SCRIPT, keygen, keyed_worker

IDLE = 1100  # idle connections: more than the usual limit of 1,024 open files


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_a_thousand_idle_connections_do_not_keep_an_authorized_main_out(
        workspace: Workspace, start_worker, tmp_path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < IDLE + 200:
        pytest.skip(f"this test opens {IDLE} connections; the hard limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, IDLE + 200), hard))
    main_key = keygen(tmp_path / "main.key")
    # (a worker started where the soft limit is the usual 1,024, its hard limit higher)
    worker, _ = keyed_worker(start_worker, tmp_path, "w", [main_key],
                             prefix=("prlimit", "--nofile=1024:8192"))
    host, port = worker.address.removeprefix("tcp://").rsplit(":", 1)
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE):  # (each says nothing: libzmq holds it until its handshake
            # times out, 30 s)
            idle.append(socket.create_connection((host, int(port)), timeout=30))
        shutil.copy(TASKS, workspace.root / "tasks.py")
        workspace.write("main.py", SCRIPT)
        out = workspace.run("main.py", env={
            "DISTRIB_KEY": str(tmp_path / "main.key"),
            "DISTRIB_WORKERS": f"{worker.address} {worker.public_key}"})
        assert out.returncode == 0, out.stderr
        assert "RESULT [1, 2, 3, 4, 5, 6, 7, 8]" in out.stdout, out.stdout + out.stderr
        assert "Too many open files" not in worker.log()
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

"""Idle connections to a worker's port, or to a listening Main's, from anyone who reaches it
(no key needed): the worker keeps serving its Mains, and the Main its workers."""

from __future__ import annotations

import os
import resource
import select
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PYTHON, TASKS, Workspace, ended, free_port, wait_for
from tests.integration.test_dial import SCRIPT as DIAL_SCRIPT
from tests.integration.test_dial import listening, main_env, pair
from tests.integration.test_keys import SCRIPT, keygen, keyed_worker

IDLE = 1100  # idle connections: more than the usual limit of 1,024 open files


@pytest.fixture
def many_files() -> Iterator[None]:
    """This test process may open ``IDLE`` connections and more (skipped if it may not)."""
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux), to start a process under the usual limit")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < IDLE + 200:
        pytest.skip(f"this test opens {IDLE} connections; the hard limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, IDLE + 200), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Flood:
    """``IDLE`` connections to ``port`` of the loopback that say nothing, each opened again as
    soon as the other end drops it (libzmq does after 30 s without a handshake), as someone
    keeping a port busy would, until the end of the ``with``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.open: dict[int, socket.socket] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, daemon=True)

    def __enter__(self) -> Flood:
        for _ in range(IDLE):
            self._connect()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        for sock in self.open.values():
            sock.close()

    def _connect(self) -> int:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.open[sock.fileno()] = sock
        return sock.fileno()

    def _keep(self) -> None:
        poller = select.poll()
        for fd in self.open:
            poller.register(fd, select.POLLIN)
        while not self._stop.is_set():
            for fd, _ in poller.poll(200):  # (only a drop makes one readable: none speaks)
                poller.unregister(fd)
                self.open.pop(fd).close()
                try:
                    poller.register(self._connect(), select.POLLIN)
                except OSError:  # (the port is closed: its process ended)
                    return


def _line(proc: subprocess.Popen[str], deadline: float = 90.0) -> str:
    """The next line ``proc`` prints, waited for ``deadline`` seconds at most."""
    assert proc.stdout is not None
    poller = select.poll()
    poller.register(proc.stdout, select.POLLIN)
    assert poller.poll(deadline * 1000), f"nothing printed in {deadline} s"
    return proc.stdout.readline()


def test_a_thousand_idle_connections_do_not_keep_an_authorized_main_out(
        workspace: Workspace, start_worker, tmp_path, many_files) -> None:
    main_key = keygen(tmp_path / "main.key")
    # (a worker started where the soft limit is the usual 1,024, its hard limit higher)
    worker, _ = keyed_worker(start_worker, tmp_path, "w", [main_key],
                             prefix=("prlimit", "--nofile=1024:8192"))
    with Flood(int(worker.address.rsplit(":", 1)[1])):
        shutil.copy(TASKS, workspace.root / "tasks.py")
        workspace.write("main.py", SCRIPT)
        out = workspace.run("main.py", env={
            "DISTRIB_KEY": str(tmp_path / "main.key"),
            "DISTRIB_WORKERS": f"{worker.address} {worker.public_key}"})
        assert out.returncode == 0, out.stderr
        assert "RESULT [1, 2, 3, 4, 5, 6, 7, 8]" in out.stdout, out.stdout + out.stderr
        assert "Too many open files" not in worker.log()


def test_a_thousand_idle_connections_do_not_keep_a_dialling_worker_from_its_main(
        workspace: Workspace, start_worker, tmp_path: Path, many_files) -> None:
    port = free_port()
    worker_key = tmp_path / "w.key"
    env, main = main_env(tmp_path, port, [pair(worker_key).public])
    workspace.write("main.py", DIAL_SCRIPT)
    err = tmp_path / "main.err"
    with open(err, "w") as stderr:  # (the Main, started where the usual 1,024 files are all)
        proc = subprocess.Popen(
            ["prlimit", "--nofile=1024:8192", str(PYTHON), "main.py"], cwd=workspace.root,
            env={**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir), **env},
            text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
    with ended(proc):
        wait_for(lambda: listening(port), what=f"the Main listening on {port}")
        with Flood(port):  # (kept up: a Main that could not accept meanwhile never would)
            start_worker(name="dialler", extra=("--key", str(worker_key), "--connect",
                                                f"127.0.0.1:{port}", "--main-key", main.public))
            line = _line(proc)
            assert line.strip() == f"SUM {[2 * x + 1 for x in range(12)]}", err.read_text()
            assert "Too many open files" not in err.read_text()

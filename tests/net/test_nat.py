"""A worker behind NAT: a private LAN behind a router namespace that masquerades with
nftables and refuses connections in; the worker dials a Main on the public side."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from distrib.wire import _keys
from tests.helpers import PYTHON, Workspace
from tests.net.netns import Network
from tests.net.test_hosts import run_in

SCRIPT = """
    import logging
    import distrib
    from distrib import distributed

    @distributed
    def add(a, b):
        return a + b

    @distributed
    def tree(depth):
        if depth == 0:
            return 1
        return sum(r.unwrap() for r in [tree(depth - 1), tree(depth - 1)])

    if __name__ == "__main__":
        logging.basicConfig(level=logging.INFO)  # (the Main says where its workers dial from)
        print("SUM", distrib.gather([add(x, x + 1) for x in range(12)]))
        print("TREE", tree(2).unwrap())
    """

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print("CONNECTED")
except OSError as exc:
    print("FAILED", type(exc).__name__)
"""


def test_a_worker_behind_nat_dials_a_main_on_the_public_side(
        network: Network, start_worker, workspace: Workspace, tmp_path: Path) -> None:
    if shutil.which("nft") is None:
        pytest.skip("needs nftables (`apt-get install nftables`) for the router's NAT")
    main = network.add("main")
    router, lan = network.add_nat("nat")
    main_key, worker_key = tmp_path / "main.key", tmp_path / "worker.key"
    _keys.write(main_key, main_pair := _keys.generate())
    _keys.write(worker_key, worker_pair := _keys.generate())
    authorized = tmp_path / "workers.authorized"
    authorized.write_text(f"{worker_pair.public} the lab desktop\n")
    worker = start_worker(name="behind-nat", listen=f"{lan.address}:7070",
                          prefix=tuple(lan.cmd()),
                          extra=("--key", str(worker_key), "--connect", f"{main.address}:7788",
                                 "--main-key", main_pair.public))
    # The public side cannot open a connection into the LAN, even routed to the router
    # (which can: the worker listens there too).
    subprocess.run(main.cmd("ip", "route", "add", "192.168.77.0/24", "via", router.address),
                   check=True, capture_output=True, timeout=30)
    for host, expected in ((main, "FAILED"), (router, "CONNECTED")):
        tried = subprocess.run(host.cmd(PYTHON, "-c", CONNECT, lan.address, "7070"),
                               capture_output=True, text=True, timeout=60)
        assert tried.stdout.startswith(expected), (host.name, tried.stdout + tried.stderr)
    workspace.write("main.py", SCRIPT)
    out = run_in(main, workspace, "main.py", {
        "DISTRIB_KEY": str(main_key), "DISTRIB_LISTEN": f"{main.address}:7788",
        "DISTRIB_AUTHORIZED_WORKERS": str(authorized)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"SUM {[2 * x + 1 for x in range(12)]}", "TREE 4"]
    # It came from the router's public address: masqueraded.
    assert f"the lab desktop) dialled in from {router.address}" in out.stderr, out.stderr
    assert "refused" not in worker.log()

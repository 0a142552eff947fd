"""Reach through NAT on both sides: two private LANs, each behind a masquerading router
namespace that refuses connections in, and a public side between them that holds the relay.

A Main on LAN B reaches a worker on LAN A only through the relay, by the worker's key; a Main
on the public side uses workers it dials, workers that dial it and relayed workers in one run;
a relay killed and started again gets its parties back, and the Main its worker.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from distrib.wire import _keys
from distrib.wire._keys import KeyPair
from tests.helpers import PYTHON, REPO, Workspace, stop_process, wait_for
from tests.net.netns import Host, Network
from tests.net.test_hosts import run_in, status_json
from tests.net.test_nat import CONNECT, SCRIPT

RELAY_PORT = "7790"


@pytest.fixture
def nat(network: Network) -> Network:
    if shutil.which("nft") is None:
        pytest.skip("needs nftables (`apt-get install nftables`) for the routers' NAT")
    return network


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, KeyPair]:
    """Key pairs (each written to ``<name>.key``) of the relay, the Main and the workers."""
    pairs = {}
    for name in ("relay", "main", "a1", "a2", "p"):
        pairs[name] = _keys.generate()
        _keys.write(tmp_path / f"{name}.key", pairs[name])
    (tmp_path / "parties.authorized").write_text(
        "".join(f"{pairs[n].public} {n}\n" for n in ("main", "a1", "a2", "p")))
    (tmp_path / "mains.authorized").write_text(f"{pairs['main'].public} the main\n")
    (tmp_path / "workers.authorized").write_text(
        "".join(f"{pairs[n].public} {n}\n" for n in ("a1", "a2", "p")))
    return pairs


@pytest.fixture
def start_relay(tmp_path: Path) -> Iterator[Callable[[Host], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(host: Host) -> subprocess.Popen[str]:
        log = open(tmp_path / f"relay-{len(started)}.log", "w")
        proc = subprocess.Popen(
            host.cmd(PYTHON, "-m", "distrib", "relay", "--listen", f"0.0.0.0:{RELAY_PORT}",
                     "--key", str(tmp_path / "relay.key"), "--authorized-keys",
                     str(tmp_path / "parties.authorized"), "-v"),
            stdout=subprocess.PIPE, stderr=log, text=True, cwd=tmp_path)
        log.close()
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "ready on" in line, line + (tmp_path / f"relay-{len(started) - 1}.log").read_text()
        return proc

    yield start
    for proc in started:
        stop_process(proc)
        assert proc.stdout is not None
        proc.stdout.close()


def relayed_worker(start_worker, host: Host, tmp_path: Path, name: str, relay: Host,
                   keys: dict[str, KeyPair], listen: str = "127.0.0.1:7070"):
    """A worker on a LAN (listening on its own loopback), reached only through ``relay``."""
    return start_worker(name=name, listen=listen, prefix=tuple(host.cmd()), extra=(
        "--key", str(tmp_path / f"{name}.key"), "--authorized-keys",
        str(tmp_path / "mains.authorized"), "--relay", f"{relay.address}:{RELAY_PORT}",
        "--relay-key", keys["relay"].public))


def relay_env(tmp_path: Path, relay: Host, keys: dict[str, KeyPair],
              workers: list[str]) -> dict[str, str]:
    return {"DISTRIB_KEY": str(tmp_path / "main.key"),
            "DISTRIB_RELAY": f"{relay.address}:{RELAY_PORT}",
            "DISTRIB_RELAY_KEY": keys["relay"].public, "DISTRIB_WORKERS": ",".join(workers)}


def seed(host: Host, workspace: Workspace, env: dict[str, str]) -> None:
    """The seed example (examples/sleep_sum.py) runs on ``host`` with ``env``'s workers."""
    shutil.copy(REPO / "examples" / "sleep_sum.py", workspace.root)
    out = run_in(host, workspace, "sleep_sum.py", {**env, "DEMO_COUNT": "24",
                                                   "DEMO_SLEEP": "0.05"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([2 * x + 1 for x in range(24)])


def unreachable(host: Host, address: str, port: str) -> None:
    tried = subprocess.run(host.cmd(PYTHON, "-c", CONNECT, address, port),
                           capture_output=True, text=True, timeout=60)
    assert tried.stdout.startswith("FAILED"), (host.name, tried.stdout + tried.stderr)


def test_a_main_behind_nat_reaches_a_worker_behind_another_nat_through_the_relay(
        nat: Network, start_worker, start_relay, workspace: Workspace, tmp_path: Path,
        keys: dict[str, KeyPair]) -> None:
    relay = nat.add("relay")
    router_a, lan_a = nat.add_nat("a", "192.168.77")
    router_b, lan_b = nat.add_nat("b", "192.168.78")
    start_relay(relay)
    # (listening on its LAN address: its router can connect to it, nobody outside can)
    worker = relayed_worker(start_worker, lan_a, tmp_path, "a1", relay, keys,
                            listen=f"{lan_a.address}:7070")
    wait_for(lambda: "registered at relay" in worker.log(), 60, "the worker to register")
    # Neither LAN can be entered from the public side, nor from the other LAN.
    for host in (relay, router_b):
        subprocess.run(host.cmd("ip", "route", "add", "192.168.77.0/24", "via",
                                router_a.address), check=True, capture_output=True, timeout=30)
    tried = subprocess.run(router_a.cmd(PYTHON, "-c", CONNECT, lan_a.address, "7070"),
                           capture_output=True, text=True, timeout=60)
    assert tried.stdout.startswith("CONNECTED"), tried.stdout + tried.stderr
    for host in (relay, router_b, lan_b):
        unreachable(host, lan_a.address, "7070")
    workspace.write("main.py", SCRIPT)
    out = run_in(lan_b, workspace, "main.py",
                 relay_env(tmp_path, relay, keys, [f"relay:{keys['a1'].public}"]))
    assert out.returncode == 0, out.stderr + worker.log()
    assert out.stdout.splitlines() == [f"SUM {[2 * x + 1 for x in range(12)]}", "TREE 4"]
    assert "refused" not in worker.log()
    seed(lan_b, workspace, relay_env(tmp_path, relay, keys, [f"relay:{keys['a1'].public}"]))
    # `distrib status` on LAN B asks the worker through the relay; it says where it is
    # registered.
    row, = status_json(lan_b, relay_env(tmp_path, relay, keys, [f"relay:{keys['a1'].public}"]))
    assert row["name"] == "a1" and row["address"] == f"tcp://{lan_a.address}:7070", row
    assert row["relay"]["relay"] == f"{relay.address}:{RELAY_PORT}", row
    assert row["relay"]["registered"] and not row["relay"]["refused"], row


MIXED = SCRIPT.replace('print("TREE", tree(2).unwrap())', '''print("TREE", tree(3).unwrap())
        import time
        seen = set()
        for _ in range(50):  # (until each worker ran some: they join one by one)
            responses = [add(x, 1) for x in range(12)]
            distrib.gather(responses)
            seen.update(r.worker for r in responses)
            if len(seen) == 3:
                break
            time.sleep(0.1)
        print("WORKERS", sorted(seen))
        from distrib.main import _current
        views = _current._session.scheduler.workers.values()
        deadline = time.monotonic() + 30
        while not all(v.round_trip for v in views) and time.monotonic() < deadline:
            time.sleep(0.05)
        print("MEASURED", sorted(v.name for v in views if v.round_trip))''')


def test_direct_dialling_and_relayed_workers_in_one_run(
        nat: Network, start_worker, start_relay, workspace: Workspace, tmp_path: Path,
        keys: dict[str, KeyPair]) -> None:
    relay, public = nat.add("relay"), nat.add("public")
    _, lan_a = nat.add_nat("a", "192.168.77")
    start_relay(relay)
    # On the public side, a worker the Main dials; on LAN A, one that dials the Main and one
    # reached through the relay.
    direct = start_worker(name="p", listen=f"{public.address}:7070", prefix=tuple(public.cmd()),
                          extra=("--key", str(tmp_path / "p.key"), "--authorized-keys",
                                 str(tmp_path / "mains.authorized")))
    dialling = start_worker(name="a1", listen="127.0.0.1:0", prefix=tuple(lan_a.cmd()),
                            extra=("--key", str(tmp_path / "a1.key"), "--connect",
                                   f"{relay.address}:7788", "--main-key", keys["main"].public))
    relayed = relayed_worker(start_worker, lan_a, tmp_path, "a2", relay, keys)
    wait_for(lambda: "registered at relay" in relayed.log(), 60, "the worker to register")
    workspace.write("main.py", MIXED)
    env = relay_env(tmp_path, relay, keys, [f"{direct.address.removeprefix('tcp://')} "
                                            f"{keys['p'].public}", f"relay:{keys['a2'].public}"])
    env.update(DISTRIB_LISTEN=f"{relay.address}:7788",
               DISTRIB_AUTHORIZED_WORKERS=str(tmp_path / "workers.authorized"))
    out = run_in(relay, workspace, "main.py", env)  # (the Main on the relay's public host)
    logs = out.stderr + direct.log() + dialling.log() + relayed.log()
    assert out.returncode == 0, logs
    lines = out.stdout.splitlines()
    assert lines[:2] == [f"SUM {[2 * x + 1 for x in range(12)]}", "TREE 8"], logs
    assert lines[2] == "WORKERS ['a1', 'a2', 'p']", logs
    assert lines[3] == "MEASURED ['a1', 'a2', 'p']", logs  # (each link's round trip)
    seed(relay, workspace, env)


RESTART = """
    import os, sys, time
    import distrib
    from distrib import distributed

    @distributed
    def square(x):
        return x * x

    if __name__ == "__main__":
        print("FIRST", distrib.gather([square(x) for x in range(8)]), flush=True)
        while not os.path.exists("restarted"):
            time.sleep(0.05)
        print("AGAIN", distrib.gather([square(x) for x in range(8)]), flush=True)
    """


def test_a_relay_started_again_gets_its_parties_back(
        nat: Network, start_worker, start_relay, workspace: Workspace, tmp_path: Path,
        keys: dict[str, KeyPair]) -> None:
    relay = nat.add("relay")
    _, lan_a = nat.add_nat("a", "192.168.77")
    _, lan_b = nat.add_nat("b", "192.168.78")
    first = start_relay(relay)
    worker = relayed_worker(start_worker, lan_a, tmp_path, "a1", relay, keys)
    workspace.write("main.py", RESTART)
    env = relay_env(tmp_path, relay, keys, [f"relay:{keys['a1'].public}"])
    main = subprocess.Popen(lan_b.cmd(PYTHON, "main.py"), cwd=workspace.root, text=True,
                            env={**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
                                 "DISTRIB_LOST_AFTER": "3", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert main.stdout is not None
        squares = str([x * x for x in range(8)])
        assert main.stdout.readline().strip() == f"FIRST {squares}"
        registrations = worker.log().count("registered at relay")
        first.kill()
        first.wait(30)
        start_relay(relay)
        wait_for(lambda: worker.log().count("registered at relay") > registrations, 60,
                 "the worker to register again")
        (workspace.root / "restarted").write_text("")
        line = main.stdout.readline().strip()
        assert line == f"AGAIN {squares}", line + (main.stderr.read() if main.stderr else "")
        assert main.wait(60) == 0
    finally:
        stop_process(main)
        for stream in (main.stdout, main.stderr):
            if stream is not None:
                stream.close()
    assert re.search(r"relay .* stopped answering|lost the connection to relay", worker.log())


def test_auto_calls_go_direct_where_they_can_and_through_the_main_where_they_cannot(
        nat: Network, start_worker, workspace: Workspace, tmp_path: Path,
        keys: dict[str, KeyPair]) -> None:
    # The Main dials a worker on its own LAN and one on the public side, which authorize each
    # other: the LAN's worker can send calls to the public one, not the other way round.
    from tests.net.test_redistribution import TREE

    public = nat.add("public")
    _, lan_a = nat.add_nat("a", "192.168.77")
    both = tmp_path / "both.authorized"
    both.write_text("".join(f"{keys[n].public} {n}\n" for n in ("main", "a1", "p")))
    workers = {
        name: start_worker(name=name, listen=f"{host.address}:7070", prefix=tuple(host.cmd()),
                           extra=("--key", str(tmp_path / f"{name}.key"), "--authorized-keys",
                                  str(both)))
        for name, host in (("a1", lan_a), ("p", public))}
    unreachable(public, lan_a.address, "7070")
    workspace.write("main.py", TREE)
    out = run_in(lan_a, workspace, "main.py", {
        "DISTRIB_KEY": str(tmp_path / "main.key"), "DISTRIB_REDISTRIBUTION": "auto",
        "DISTRIB_WORKERS": f"{lan_a.address}:7070 {keys['a1'].public},"
                           f"{public.address}:7070 {keys['p'].public}"}, "2", "0.02")
    logs = out.stderr + "".join(w.log() for w in workers.values())
    assert out.returncode == 0, logs
    assert out.stdout.splitlines()[0] == "LEAVES 100 True", logs
    assert "Error" not in out.stderr, logs
    # a1 sent calls to p itself; p's calls went through the Main (CALLS), with no error.
    assert "to worker p directly" in workers["a1"].log(), logs
    calls = int(out.stdout.splitlines()[1].split()[1])
    assert calls > 0, out.stdout
    assert "did not prove" not in workers["p"].log() and "WorkerLost" not in logs, logs

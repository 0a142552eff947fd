"""Calls made inside tasks across three hosts whose workers authorize each other's keys:
relayed through the Main, or direct from worker to worker (the Main hears only that they were
placed), and ``auto`` falling back to the Main for a worker that does not authorize the
others."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from distrib.wire import _keys
from tests.helpers import PYTHON, Worker, Workspace, ended, finish, wait_for
from tests.net.netns import Host, Network
from tests.net.test_hosts import main_key, run_in, status_json

TREE = """
    import sys, time
    import distrib
    from distrib import distributed
    from distrib.main import _current

    @distributed
    def leaf(x):
        time.sleep(float(sys.argv[2]))
        return x

    @distributed
    def node(x, depth):
        calls = [node(x * 10 + i, depth - 1) if depth > 1 else leaf(x * 10 + i)
                 for i in range(10)]
        if depth == 1:
            return distrib.gather(calls)
        return [r for part in distrib.gather(calls) for r in part]

    if __name__ == "__main__":
        depth = int(sys.argv[1])
        out = node(0, depth).unwrap(timeout=150)
        print("LEAVES", len(out), sorted(out) == list(range(10 ** depth)))
        received = _current._session.received
        print("CALLS", received["Call"], "PLACED", received["Placed"])
"""


def three_workers(network: Network, start_worker, workspace: Workspace, tmp_path: Path,
                  authorizes_peers: dict[str, bool]
                  ) -> tuple[Host, dict[str, str], dict[str, Worker]]:
    """The Main's host, the settings naming a keyed worker on each of three hosts w1-w3, and
    those workers; each authorizes the Main, and the other workers' keys where
    ``authorizes_peers`` says so."""
    workers = {}
    m = network.add("main")
    hosts = [network.add(f"w{i}") for i in (1, 2, 3)]
    key, main_public = main_key(tmp_path)
    pairs = {h.name: _keys.generate() for h in hosts}
    for host in hosts:
        secret = tmp_path / f"{host.name}.key"
        _keys.write(secret, pairs[host.name])
        auth = tmp_path / f"{host.name}.authorized"
        others = [p.public for n, p in pairs.items() if n != host.name] \
            if authorizes_peers[host.name] else []
        auth.write_text("".join(f"{k}\n" for k in [main_public, *others]))
        workers[host.name] = start_worker(
            name=host.name, listen=f"{host.address}:7070", prefix=tuple(host.cmd()), threads=2,
            extra=("--key", str(secret), "--authorized-keys", str(auth)))
    workspace.write("main.py", TREE)
    return m, {"DISTRIB_KEY": str(key), "DISTRIB_WORKERS": ",".join(
        f"{h.address}:7070 {pairs[h.name].public}" for h in hosts)}, workers


def answering(m: Host, env: dict[str, str], workers: dict[str, Worker]) -> list[dict]:
    """The workers' status rows, once every worker answers (a worker that ends a tree of
    calls on loaded cores may take a while); else what each silent one is doing."""
    rows: list[dict] = []

    def every() -> bool:
        nonlocal rows
        rows = status_json(m, env, all_reachable=False)
        return not any(row["problem"] for row in rows)

    try:
        wait_for(every, timeout=150, what="every worker answering its status")
    except AssertionError:
        silent = {n: w for n, w in workers.items()
                  if any(row["problem"] and row["address"] in w.address for row in rows)}
        for worker in silent.values():  # (each writes what its threads do to its log)
            if worker.proc.poll() is None:
                with contextlib.suppress(AssertionError):
                    worker.stacks(10)
        raise AssertionError("workers not answering (name, exit code, log): " + repr(
            [(n, w.proc.poll(), w.log()[-8000:]) for n, w in silent.items()])) from None
    return rows


def tree_run(m: Host, workspace: Workspace, env: dict[str, str], depth: int,
             mode: str, leaf: float) -> tuple[int, int]:
    out = run_in(m, workspace, "main.py", {**env, "DISTRIB_REDISTRIBUTION": mode}, str(depth),
                 str(leaf))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == f"LEAVES {10 ** depth} True", out.stdout
    _, calls, _, placed = lines[1].split()
    return int(calls), int(placed)


# (the tests that wait for every worker to answer: up to 150 s each, past the suite's 120 s,
# so that a worker slow to answer is shown with what it was doing, not cut short unexplained)
@pytest.mark.long
@pytest.mark.timeout(600)
def test_a_tree_relayed_and_direct_over_three_hosts_gives_the_same_results(
        network: Network, start_worker, workspace: Workspace, tmp_path: Path) -> None:
    m, env, workers = three_workers(network, start_worker, workspace, tmp_path,
                                    {"w1": True, "w2": True, "w3": True})
    calls = 10 + 100 + 1000
    # Relayed: every call made inside a task reaches the Main.
    assert tree_run(m, workspace, env, 3, "relayed", 0.02) == (calls, 0)
    before = {row["name"]: row for row in answering(m, env, workers)}
    # Direct: none does; the workers placed them, and said so.
    assert tree_run(m, workspace, env, 3, "direct", 0.02) == (0, calls)
    after = {row["name"]: row for row in answering(m, env, workers)}
    sent = {n: after[n]["direct_sent"] - before[n]["direct_sent"] for n in after}
    here = {n: after[n]["direct_here"] - before[n]["direct_here"] for n in after}
    assert sum(sent.values()) + sum(here.values()) >= calls  # (and again if handed back)
    assert sum(sent.values()) > 0, after  # calls went from worker to worker
    done = {n: after[n]["tasks_done"] - before[n]["tasks_done"] for n in after}
    assert all(n > 0 for n in done.values()), done  # every worker ran part of the tree


@pytest.mark.timeout(450)  # (as above)
def test_auto_goes_through_the_main_for_a_worker_that_does_not_authorize_the_others(
        network: Network, start_worker, workspace: Workspace, tmp_path: Path) -> None:
    m, env, workers = three_workers(network, start_worker, workspace, tmp_path,
                                    {"w1": True, "w2": True, "w3": False})
    # (leaves long enough that a worker's slots, and those it reaches directly, fill up: then
    # its calls go through the Main, which has w3's slots too)
    calls, placed = tree_run(m, workspace, env, 2, "auto", 0.3)
    table = {row["name"]: row for row in answering(m, env, workers)}
    assert calls + placed == 110 and calls > 0 and placed > 0, (calls, placed, [
        {k: v for k, v in row.items() if k.startswith(("direct", "tasks_done"))}
        for row in table.values()])
    logs = {n: (tmp_path / f"worker-{n}.log").read_text() for n in ("w1", "w2", "w3")}
    refused = [n for n in ("w1", "w2") if "w3 (10.213.0.5:7070) does not authorize this "
               "worker's key" in logs[n]]
    assert refused, logs  # (w1 or w2 made calls, and found w3 would not take them)
    assert not any("does not authorize" in logs[n] for n in ("w3",)), logs["w3"]
    table = {row["name"]: row for row in answering(m, env, workers)}
    assert sum(table[n]["direct_relayed"] for n in refused) > 0


@pytest.mark.long
def test_a_worker_killed_mid_tree_loses_no_call_and_leaves_nothing_running(
        network: Network, start_worker, workspace: Workspace, tmp_path: Path) -> None:
    m, env, workers = three_workers(network, start_worker, workspace, tmp_path,
                                    {"w1": True, "w2": True, "w3": True})
    full = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir), **env,
            "DISTRIB_REDISTRIBUTION": "direct", "DISTRIB_LOST_AFTER": "3"}
    proc = subprocess.Popen(m.cmd(PYTHON, "main.py", "2", "0.3"), cwd=workspace.root, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with ended(proc):
        # Midway, while w1 runs part of the tree (its own calls, or calls sent to it), it dies.
        def midway() -> bool:
            rows = {r["name"]: r for r in status_json(m, env)}
            return rows["w1"]["busy"] > 0 and sum(r["tasks_done"] for r in rows.values()) >= 20
        wait_for(midway, timeout=90, what="w1 running part of the tree, midway")
        os.kill(workers["w1"].pid, signal.SIGKILL)
        out, err = finish(proc)
    assert proc.returncode == 0, err[-3000:]
    assert out.splitlines()[0] == "LEAVES 100 True", out + err[-3000:]
    # What w1 sent the others stopped with it; nothing is left running or queued anywhere.
    def idle() -> bool:
        rows = [r for r in status_json(m, env, all_reachable=False) if r.get("name") in ("w2", "w3")]
        return len(rows) == 2 and all(r["busy"] == 0 and r["queued"] == 0 for r in rows)
    wait_for(idle, timeout=60, what="w2 and w3 idle")

"""Several hosts: a Main and workers in their own network namespaces, with keys."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil

from distrib.wire import _keys
from tests.helpers import PYTHON, Worker, Workspace, ended, finish, wait_for
from tests.helpers import REPO, TASKS
from tests.net.netns import Host, Network


def keyed_worker(start_worker, host: Host, tmp_path: Path, name: str, mains: list[str],
                 extra: tuple[str, ...] = (), env: dict[str, str] | None = None):
    key = tmp_path / f"{name}.key"
    _keys.write(key, _keys.generate())
    auth = tmp_path / f"{name}.authorized"
    auth.write_text("".join(f"{k}\n" for k in mains))
    return start_worker(name=name, listen=f"{host.address}:7070", prefix=tuple(host.cmd()),
                        extra=("--key", str(key), "--authorized-keys", str(auth), *extra),
                        env=env)


def main_key(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "main.key"
    pair = _keys.generate()
    _keys.write(path, pair)
    return path, pair.public


def run_in(host: Host, ws: Workspace, script: str, env: dict[str, str], *args: str,
           timeout: float = 180) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "DISTRIB_CACHE_DIR": str(ws.cache_dir), **env}
    return subprocess.run(host.cmd(PYTHON, script, *args), cwd=ws.root, env=full,
                          capture_output=True, text=True, timeout=timeout)


def status_json(host: Host, env: dict[str, str], all_reachable: bool = True) -> list[dict]:
    # (a generous wait for each answer: the workers may still be busy on 2 loaded cores)
    out = subprocess.run(host.cmd(PYTHON, "-m", "distrib", "status", "--json", "--timeout", "30"),
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads(out.stdout)
    assert not all_reachable or not any(row["problem"] for row in rows), rows
    return rows


def test_seed_example_across_three_hosts_with_keys(network: Network, start_worker,
                                                   workspace: Workspace, tmp_path: Path) -> None:
    m, h1, h2 = network.add("main"), network.add("w1"), network.add("w2")
    key, public = main_key(tmp_path)
    knobs = {"DEMO_SLEEP": "not-a-number"}  # the Main's value is forwarded and wins
    w1 = keyed_worker(start_worker, h1, tmp_path, "w1", [public], env=knobs)
    w2 = keyed_worker(start_worker, h2, tmp_path, "w2", [public], env=knobs)
    assert w1.address == f"tcp://{h1.address}:7070"
    env = {"DISTRIB_KEY": str(key),
           "DISTRIB_WORKERS": f"{h1.address}:7070 {w1.public_key},{h2.address}:7070 "
                              f"{w2.public_key}"}
    shutil.copy(REPO / "examples" / "sleep_sum.py", workspace.root)
    out = run_in(m, workspace, "sleep_sum.py", {**env, "DEMO_COUNT": "40", "DEMO_SLEEP": "0.05"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([2 * x + 1 for x in range(40)])
    table = {row["name"]: row for row in status_json(m, env)}
    assert table["w1"]["tasks_done"] + table["w2"]["tasks_done"] == 40
    assert table["w1"]["tasks_done"] > 0 and table["w2"]["tasks_done"] > 0
    assert all(row["problem"] == "" for row in table.values())


PARTITION_SCRIPT = """
    import pathlib, sys, time
    import distrib
    import tasks

    if __name__ == "__main__":
        release, expect_back = pathlib.Path(sys.argv[1]), sys.argv[2] == "1"
        responses = [tasks.sleeper(0.2) for _ in range(60)]
        for r in responses[:6]:
            r.unwrap()
        print("HALF", flush=True)
        results = [r.unwrap(timeout=150) for r in responses]
        print("PHASE1", len(results), results == [0.2] * 60, flush=True)
        print("WORKERS", sorted({r.worker for r in responses}), flush=True)
        while expect_back and not release.exists():
            pass
        deadline = time.monotonic() + (90 if expect_back else 0)
        while time.monotonic() < deadline:  # until w1 gets tasks again
            if "w1" in {r.worker for r in tasks.ok.map(range(8)) if r.wait(60) and r.ok()}:
                print("W1-BACK", flush=True)
                break
            time.sleep(0.05)  # the script's own pacing between probes, not a test wait
    """


def partition_run(network: Network, start_worker, workspace: Workspace, tmp_path: Path,
                  fault: Callable[[Host, Worker], None],
                  heal: Callable[[Host], None] | None) -> tuple[list[str], str]:
    """Run 60 tasks over two workers; ``fault`` hits w1 mid-run; ``heal`` after phase 1."""
    m, h1, h2 = network.add("main"), network.add("w1"), network.add("w2")
    key, public = main_key(tmp_path)
    w1 = keyed_worker(start_worker, h1, tmp_path, "w1", [public], ("--threads", "4"))
    w2 = keyed_worker(start_worker, h2, tmp_path, "w2", [public], ("--threads", "4"))
    shutil.copy(TASKS, workspace.root / "tasks.py")
    workspace.write("main.py", PARTITION_SCRIPT)
    release = tmp_path / "release"
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_KEY": str(key), "DISTRIB_LOST_AFTER": "3", "DISTRIB_HEARTBEAT": "0.5",
           "DISTRIB_WORKERS": f"{h1.address}:7070 {w1.public_key},{h2.address}:7070 "
                              f"{w2.public_key}"}
    proc = subprocess.Popen(m.cmd(PYTHON, "main.py", str(release), "1" if heal else "0"),
                            cwd=workspace.root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with ended(proc):
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("HALF")
        fault(h1, w1)
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        if heal is not None:
            heal(h1)
        release.write_text("go")
        rest, stderr = finish(proc)
    assert lines[0].split() == ["PHASE1", "60", "True"], stderr  # one right result per call
    assert "w2" in lines[1]
    return lines + rest.splitlines(), stderr


def test_a_cut_link_sends_tasks_elsewhere_and_a_healed_one_is_used_again(
        network: Network, start_worker, workspace: Workspace, tmp_path: Path) -> None:
    lines, stderr = partition_run(network, start_worker, workspace, tmp_path,
                                  lambda host, worker: network.cut(host), network.restore)
    assert "W1-BACK" in lines, stderr
    assert "declared lost" in stderr


def test_a_killed_worker_daemon_loses_nothing(network: Network, start_worker,
                                              workspace: Workspace, tmp_path: Path) -> None:
    executors: list[psutil.Process] = []

    def kill(host: Host, worker: Worker) -> None:
        executors.extend(psutil.Process(worker.pid).children())
        os.kill(worker.pid, signal.SIGKILL)
        worker.proc.wait(30)

    lines, stderr = partition_run(network, start_worker, workspace, tmp_path, kill, None)
    assert "declared lost" in stderr
    assert executors  # it was running tasks; orphaned executors leave by themselves
    wait_for(lambda: all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
                         for p in executors), what="orphaned executors to exit")


def test_a_worker_refuses_a_network_address_without_keys_unless_insecure(
        network: Network, start_worker, tmp_path: Path) -> None:
    host = network.add("w")
    refused = subprocess.run(host.cmd(PYTHON, "-m", "distrib", "worker", "--listen",
                                      f"{host.address}:7070", "--cache-dir", str(tmp_path)),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "distrib keygen" in refused.stderr
    worker = start_worker(name="open", listen=f"{host.address}:7070", prefix=tuple(host.cmd()),
                          extra=("--insecure",))
    wait_for(lambda: "INSECURE" in worker.log(), what="the insecure warning")

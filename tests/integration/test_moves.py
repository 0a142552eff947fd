"""Work moves to where the slots are, with real daemons: a worker that joins late gets tasks
queued on another, a slowed worker gives its queue away, a move that races a start neither
loses a task nor runs it twice, and a Main cannot take back another Main's tasks."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import zmq

from distrib.wire import _codec
from distrib.wire import _messages as m
from tests.helpers import PYTHON, Workspace, ended, finish, raw_main, wait_for

# Each run leaves a file "<i>.<worker>.<random>": a task run twice leaves two.
TASKS = """
    import os, time, uuid
    from pathlib import Path
    from distrib import distributed

    @distributed
    def step(i, seconds, folder):
        start = time.time()
        time.sleep(seconds * float(os.environ.get("MOVE_SLOWDOWN", "1")))
        who = os.environ.get("MOVE_WORKER", "?")
        Path(folder, f"{i}.{who}.{uuid.uuid4().hex}").write_text(str(start))
        return who
    """

MAIN = """
    import logging, sys
    import movetasks

    if __name__ == "__main__":
        logging.basicConfig(level=logging.DEBUG if "-v" in sys.argv else logging.WARNING,
                            format="%(created).3f %(message)s")
        n, seconds, folder = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
        responses = [movetasks.step(i, seconds, folder) for i in range(n)]
        print("SUBMITTED", flush=True)
        print("WHO", " ".join(r.unwrap(timeout=120) for r in responses))
    """


def setup(workspace: Workspace, tmp_path: Path) -> Path:
    workspace.write("movetasks.py", TASKS)
    workspace.write("main.py", MAIN)
    folder = tmp_path / "runs"
    folder.mkdir()
    return folder


def runs(folder: Path) -> tuple[Counter[int], Counter[str]]:
    """How often each task ran, and how many tasks each worker ran."""
    names = [p.name.split(".") for p in folder.iterdir()]
    return Counter(int(i) for i, _, _ in names), Counter(who for _, who, _ in names)


def worker(start_worker: Any, name: str, slowdown: int = 1, **kwargs: Any) -> Any:
    """A one-slot worker whose tasks say its name and sleep ``slowdown`` times as long (no
    sandbox: its tasks write where the test reads)."""
    return start_worker(threads=1, name=name, extra=("--no-sandbox",), **kwargs,
                        env={"MOVE_WORKER": name, "MOVE_SLOWDOWN": str(slowdown)})


def main(workspace: Workspace, workers: list[str], *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": ",".join(workers)}
    return subprocess.Popen([PYTHON, "main.py", *args], cwd=workspace.root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_worker_that_joins_late_gets_tasks_queued_on_another(
        workspace: Workspace, start_worker: Any, tmp_path: Path) -> None:
    folder = setup(workspace, tmp_path)
    first = worker(start_worker, "a")
    late = f"ipc://{tmp_path}/late.sock"
    with ended(main(workspace, [first.address, late], "16", "0.4", str(folder),
                    "-v")) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "SUBMITTED\n"
        wait_for(lambda: runs(folder)[1]["a"], what="the first worker running tasks")
        second = worker(start_worker, "b", listen=late)
        joined = time.time()
        wait_for(lambda: runs(folder)[1]["b"], timeout=30, what="the late worker running "
                 "tasks queued on the first")
        out, err = finish(proc)
    started = min(float(p.read_text()) for p in folder.glob("*.b.*"))
    moved = [float(line.split()[0]) for line in err.splitlines() if "gave back" in line]
    print(f"the late worker started its first task {started - joined:.2f} s after it was up, "
          f"{started - moved[0]:.2f} s after the first move was answered")
    times, by_worker = runs(folder)
    assert times == Counter(range(16)), "a task was lost or ran twice"
    assert out.split()[1:].count("b") == by_worker["b"] >= 2
    assert second.status()["tasks_done"] == by_worker["b"]


def test_a_slow_worker_gives_its_queued_tasks_away(
        workspace: Workspace, start_worker: Any, tmp_path: Path) -> None:
    folder = setup(workspace, tmp_path)
    slow = worker(start_worker, "slow", 3)
    fast = worker(start_worker, "fast")
    with ended(main(workspace, [slow.address, fast.address], "24", "0.1",
                    str(folder))) as proc:
        finish(proc)
    times, by_worker = runs(folder)
    assert times == Counter(range(24)), "a task was lost or ran twice"
    # Three times as fast: about 18 of the 24 (each would hold up to 17 without moves).
    assert by_worker["fast"] >= 2 * by_worker["slow"], by_worker


def test_moves_racing_starts_lose_no_task_and_run_none_twice(
        workspace: Workspace, start_worker: Any, tmp_path: Path) -> None:
    # Short tasks, a slowed worker and one that joins late: moves are asked while the
    # victims start the very tasks asked for; the worker's answer says which won.
    folder = setup(workspace, tmp_path)
    slow = worker(start_worker, "slow", 3)
    late = f"ipc://{tmp_path}/late.sock"
    with ended(main(workspace, [slow.address, late], "150", "0.01", str(folder),
                    "-v")) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "SUBMITTED\n"
        wait_for(lambda: runs(folder)[1]["slow"], what="the first worker running tasks")
        worker(start_worker, "fast", listen=late)
        _, err = finish(proc)
    times, by_worker = runs(folder)
    assert times == Counter(range(150)), "a task was lost or ran twice"
    assert by_worker["fast"] > 0 and "gave back" in err


def test_a_main_cannot_take_back_another_mains_tasks(
        workspace: Workspace, start_worker: Any, tmp_path: Path) -> None:
    folder = setup(workspace, tmp_path)
    serving = worker(start_worker, "a")
    with ended(main(workspace, [serving.address], "6", "0.3", str(folder))) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "SUBMITTED\n"
        wait_for(lambda: runs(folder)[1]["a"], what="the Main's tasks running")
        with raw_main(serving, "hostile") as sock:
            ids = list(range(64))  # (a Main's task ids are small numbers from 0)
            sock.send_multipart(_codec.encode(m.Revoke(ids)))
            answer = None
            while not isinstance(answer, m.Revoked):
                assert sock.poll(30_000, zmq.POLLIN), "no answer to Revoke"
                answer = _codec.decode(sock.recv_multipart())
        assert answer.given == [] and answer.kept == ids
        out, _ = finish(proc)
    times, _ = runs(folder)
    assert times == Counter(range(6)) and out.split()[1:] == ["a"] * 6

"""Several Mains on one worker: slots are shared fairly across environments (real daemons)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import PYTHON, Workspace, ended, finish, wait_for, with_tasks

RUN = """
    import sys
    import tasks
    from distrib import gather

    if __name__ == "__main__":
        count, seconds = int(sys.argv[1]), float(sys.argv[2])
        responses = [tasks.sleeper(seconds) for _ in range(count)]
        print("STARTED", flush=True)
        print("DONE", gather(responses, timeout=300) == [seconds] * count, flush=True)
    """


def start(ws: Workspace, worker: str, count: int, seconds: float) -> subprocess.Popen[str]:
    with_tasks(ws).write("main.py", RUN)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(ws.cache_dir), "DISTRIB_WORKERS": worker}
    return subprocess.Popen([PYTHON, "main.py", str(count), str(seconds)], cwd=ws.root, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("mains", [2, 3])
def test_a_new_main_with_another_workspace_gets_its_share_of_the_slots_at_once(
        mains: int, tmp_path: Path, start_worker, cache_dir: Path) -> None:
    slots = 2 * mains
    worker = start_worker(threads=slots)
    spaces = []
    for i in range(mains):
        ws = Workspace(tmp_path / f"ws{i}", cache_dir)
        ws.root.mkdir()
        ws.write("marker.txt", f"workspace {i}: an environment of its own")
        spaces.append(ws)
    with contextlib.ExitStack() as stack:
        for n, ws in enumerate(spaces[:-1], 1):  # long runs, each a minute of work or more
            stack.enter_context(ended(start(ws, worker.address, 2000, 0.05)))
            wait_for(lambda: len(worker.status()["held"]) == n, what=f"long run {n} served")
        last = stack.enter_context(ended(start(spaces[-1], worker.address, 40, 0.05)))
        held_by_last = []
        while last.poll() is None:  # sample the worker's own counters while all have work
            held = worker.status()["held"]
            held_by_last += [n for name, n in held.items() if name.endswith(f":{last.pid}")]
            time.sleep(0.05)
        out, _ = finish(last)
        assert out.splitlines() == ["STARTED", "DONE True"]
        # It did not wait for the long runs (most of their tasks have not run yet), and it
        # held its share of the slots, never more while the others wanted them.
        assert worker.status()["tasks_done"] < 1000
        assert max(held_by_last) == 2, held_by_last

"""The owner's policy on a lent machine: memory limits and niceness. Real daemons."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import psutil
import pytest

from tests.helpers import PYTHON, Workspace, ended, finish, wait_for

TASKS = """
    import os, time
    import numpy as np
    from distrib import distributed

    @distributed
    def hog(mb, hold):
        block = np.ones(mb * 1_000_000 // 8)  # touched: resident
        time.sleep(hold)  # (where it passes the limit, it is stopped long before the end)
        return float(block.sum())

    @distributed
    def nap(seconds):
        time.sleep(seconds)
        return "slept"

    @distributed
    def niceness():
        return os.getpriority(os.PRIO_PROCESS, 0)
    """


def test_a_task_over_the_memory_limit_fails_naming_it_and_others_go_on(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2, extra=("--max-task-memory", "300M"))
    daemon_rss = psutil.Process(worker.pid).memory_info().rss
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import distrib, tasks

        if __name__ == "__main__":
            slow = tasks.nap(4)
            big = tasks.hog(1000, 60)
            try:
                big.unwrap(timeout=60)
            except distrib.WorkerCrashed as exc:
                print("CRASHED", exc)
            print("OTHER", slow.unwrap(timeout=60))
            print("SMALL", tasks.hog(50, 0).unwrap(timeout=60))
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, timeout=180)
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stderr[-3000:]
    assert lines[0].startswith("CRASHED hog#"), lines
    assert "more than worker w0's memory limit for a task (300M, its --max-task-memory)" \
        in lines[0]
    assert "tried 1 time(s)" in lines[0]  # not retried: no worker here has a higher limit
    assert lines[1:] == ["OTHER slept", "SMALL 6250000.0"]
    status = worker.status()
    assert status["executors_crashed"] == 1
    assert psutil.Process(worker.pid).memory_info().rss < daemon_rss + 50_000_000
    assert "enforced by sampling executors' memory" in worker.log()


def test_a_limit_from_the_policy_file_is_named_as_the_files_key(
        workspace: Workspace, start_worker, tmp_path) -> None:
    policy = tmp_path / "worker.toml"
    policy.write_text('max_task_memory = "300M"\n')
    worker = start_worker(threads=1, extra=("--policy", str(policy)))
    out = _crashed_hog(workspace, worker, 1000, 60)
    assert f"(300M, its max_task_memory in its policy file {policy})" in out.stdout


@pytest.mark.long
def test_a_task_stopped_for_memory_runs_again_only_where_the_limit_is_higher(
        workspace: Workspace, start_worker) -> None:
    small = start_worker(threads=4, name="small", extra=("--max-task-memory", "300M"))
    large = start_worker(threads=1, name="large", extra=("--max-task-memory", "4G"))
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import time
        import distrib, tasks
        from distrib.main import _current

        if __name__ == "__main__":
            distrib.init()
            deadline = time.monotonic() + 60  # (both workers welcomed this Main)
            while len(_current._session.scheduler.workers) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            big = tasks.hog(1000, 3)  # goes to the idlest worker, "small"
            print("RESULT", big.unwrap(timeout=120), big.worker)
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": f"{small.address},{large.address}"},
                        timeout=180)
    assert out.stdout.splitlines() == ["RESULT 125000000.0 large"], out.stderr[-3000:]
    assert small.status()["executors_crashed"] == 1


def test_executors_run_at_the_owners_niceness(workspace: Workspace, start_worker) -> None:
    nice = start_worker(threads=1, name="nice")
    nicer = start_worker(threads=1, name="nicer", extra=("--nice", "15"))
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import tasks

        if __name__ == "__main__":
            print("NICE", tasks.niceness().unwrap(timeout=60))
        """)
    own = os.getpriority(os.PRIO_PROCESS, 0)  # (executors are never less nice than this)
    for worker, expected in ((nice, max(10, own)), (nicer, max(15, own))):
        out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
        assert out.stdout.splitlines() == [f"NICE {expected}"], out.stderr[-3000:]


def _control(worker, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "distrib", "worker", command, "--cache-dir",
                           str(worker.cache_dir)], capture_output=True, text=True, timeout=60)


COUNTED = """
    import os, sys, time
    import distrib
    from distrib import distributed

    @distributed
    def counted(i, log):
        time.sleep(0.4)
        with open(log, "a") as f:  # (outside the workspace: not private)
            f.write(f"{i}\\n")
        return i

    if __name__ == "__main__":
        distrib.init()
        done = distrib.gather([counted(i, sys.argv[1]) for i in range(24)], timeout=180)
        print("DONE", done == list(range(24)))
    """


@pytest.mark.long
def test_drain_hands_queued_tasks_back_lets_running_ones_finish_and_exits(
        workspace: Workspace, start_worker, tmp_path) -> None:
    # (its tasks write their runs to a log of the test's: no sandbox, which would hide it)
    leaving = start_worker(threads=2, name="leaving", extra=("--no-sandbox",))
    staying = start_worker(threads=2, name="staying", extra=("--no-sandbox",))
    workspace.write("main.py", COUNTED)
    log = tmp_path / "runs.log"
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": f"{leaving.address},{staying.address}"}
    with ended(subprocess.Popen([PYTHON, "main.py", str(log)], cwd=workspace.root, env=env,
                                text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)) as main:
        wait_for(lambda: leaving.status()["busy"] == 2, what="the leaving worker busy")
        answer = _control(leaving, "drain")
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.startswith("draining: ")
        assert leaving.proc.wait(timeout=120) == 0
        out, err = finish(main)
    assert out.splitlines() == ["DONE True"], err[-3000:]
    assert sorted(int(x) for x in log.read_text().split()) == list(range(24))  # once each
    assert "worker leaving" in err and "left: drained by its owner" in err
    assert "declared lost" not in err and "WorkerLost" not in err
    assert "drained: its running tasks are done; leaving" in leaving.log()


def test_a_paused_worker_takes_no_tasks_until_resumed(workspace: Workspace, start_worker,
                                                      tmp_path) -> None:
    paused = start_worker(threads=2, name="paused")
    other = start_worker(threads=2, name="other")
    answer = _control(paused, "pause")
    assert answer.stdout.startswith("paused: "), answer.stderr
    assert paused.status()["state"] == "paused"
    workspace.write("main.py", """
        import distrib
        from distrib import distributed

        @distributed
        def where(i):
            return i

        if __name__ == "__main__":
            calls = [where(i) for i in range(12)]
            distrib.gather(calls, timeout=120)
            print("WORKERS", sorted({c.worker for c in calls}))
        """)
    both = {"DISTRIB_WORKERS": f"{paused.address},{other.address}"}
    out = workspace.run("main.py", env=both)
    assert out.stdout.splitlines() == ["WORKERS ['other']"], out.stderr[-3000:]
    assert "was paused by its owner" in out.stderr
    assert _control(paused, "resume").stdout.startswith("serving: ")
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": paused.address})
    assert out.stdout.splitlines() == ["WORKERS ['paused']"], out.stderr[-3000:]


def test_control_commands_say_what_is_wrong(tmp_path) -> None:
    empty = tmp_path / "no-worker"
    out = subprocess.run([PYTHON, "-m", "distrib", "worker", "pause", "--cache-dir", str(empty)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "0 running worker daemons use the cache" in out.stderr


def test_memory_the_executors_share_with_their_template_is_counted_once(
        workspace: Workspace, start_worker) -> None:
    # Executors forked from a template share the pages it filled at import: summed as each
    # one's resident size, 3 executors over 150 MB of shared data passed a 450 MB limit for
    # all of them, and a task was stopped though they used about 200 MB together.
    worker = start_worker(threads=3, extra=("--max-memory", "450M"))
    workspace.write("table.py", """
        DATA = b"x" * (150 << 20)  # filled at import: resident, and shared by forked executors
        """)
    workspace.write("main.py", """
        import time
        import distrib
        import table

        @distrib.distributed
        def look(seconds):
            time.sleep(seconds)  # (the worker samples its executors meanwhile)
            return len(table.DATA)

        if __name__ == "__main__":
            print(distrib.gather([look(3) for _ in range(3)], timeout=120))
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == str([150 << 20] * 3)
    assert worker.status()["executors_crashed"] == 0


def test_executors_over_the_total_memory_limit_stop_the_largest_task(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2, extra=("--max-memory", "400M"))
    out = _crashed_hog(workspace, worker, 700, 120)
    assert "together, more than its memory limit (400M, its --max-memory)" in out.stdout


def _crashed_hog(workspace: Workspace, worker: Any, mb: int, timeout: int
                 ) -> subprocess.CompletedProcess[str]:
    """Run a task holding ``mb`` MB on ``worker``, which stops it: what the script printed."""
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", f"""
        import distrib, tasks

        if __name__ == "__main__":
            try:
                tasks.hog({mb}, 60).unwrap(timeout={timeout})
            except distrib.WorkerCrashed as exc:
                print("CRASHED", exc)
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, timeout=180)
    assert out.stdout.startswith("CRASHED hog#"), out.stderr[-3000:]
    return out

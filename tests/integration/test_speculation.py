"""Backup copies of stragglers (``@distributed(speculative=True)``) with real daemons: a run
whose worker is stopped near the end finishes long before loss detection, the losing copy is
cancelled, and each call's outcome is delivered once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import PYTHON, Worker, Workspace, ended, finish, free_port, wait_for

NO_SANDBOX = ("--no-sandbox",)  # (the tasks write marks into the test's folder)

SCRIPT = """
    import logging, os, sys, time, uuid
    from concurrent.futures import as_completed
    from pathlib import Path

    import distrib
    from distrib import distributed


    def step(i, marks, last):
        # One mark per run as it starts and one as it ends: the copies that ran show.
        marks = Path(marks)
        tag = f"{i}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        (marks / f"start-{tag}").write_text("")
        slow = os.environ.get("SPEC_SLOW") and i >= last
        time.sleep(60 if slow else 0.4)
        (marks / f"end-{tag}").write_text("")
        return i * i


    backed = distributed(speculative=True)(step)
    plain = distributed(step)

    if __name__ == "__main__":
        mode, n, marks = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        distrib.init()
        logging.getLogger("distrib").setLevel(logging.INFO)
        fn = backed if mode == "speculative" else plain
        calls = fn.map(range(n), marks=marks, last=n - 2)
        called = {}
        for r in calls:
            r.add_done_callback(lambda r: called.__setitem__(r.task_id,
                                                             called.get(r.task_id, 0) + 1))
        print("SUBMITTED", flush=True)
        yielded = []
        for r in as_completed(calls, timeout=120):
            yielded.append(r.task_id)
            print(f"DONE {r.task_id} {r.worker} {time.time():.3f}", flush=True)
        wait = time.monotonic() + 30
        while len(called) < n and time.monotonic() < wait:
            time.sleep(0.01)
        good = [r.unwrap() for r in calls] == [i * i for i in range(n)]
        once = sorted(yielded) == sorted(r.task_id for r in calls) and \\
            set(called.values()) == {1} and all(r.done() and not r.cancelled() for r in calls)
        print("RESULTS", good, once, flush=True)
        (Path(marks) / "finished").write_text("")
        release = Path(marks) / "release"
        while not release.exists() and time.monotonic() < wait + 60:
            time.sleep(0.05)
    """


def run_main(workspace: Workspace, mode: str, n: int, marks: Path, workers: str,
             env: dict[str, str]) -> subprocess.Popen[str]:
    workspace.write("main.py", SCRIPT)
    marks.mkdir()
    full = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
            "DISTRIB_WORKERS": workers, **env}
    return subprocess.Popen([PYTHON, "main.py", mode, str(n), str(marks)], cwd=workspace.root,
                            env=full, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def runs(marks: Path, kind: str) -> list[str]:
    """The task numbers of the runs that left a ``kind`` mark, one entry per run."""
    return sorted(p.name.split("-")[1] for p in marks.glob(f"{kind}-*"))


def worker_of(pid: int, workers: list[Worker]) -> Worker:
    """The worker daemon whose executor is process ``pid``."""
    parents = {p.pid for p in psutil.Process(pid).parents()}
    return next(w for w in workers if w.pid in parents)


@pytest.mark.parametrize("mode", ["speculative", "plain"])
def test_a_run_whose_worker_is_stopped_near_the_end(mode: str, workspace: Workspace,
                                                    start_worker, tmp_path: Path) -> None:
    """Stopped (SIGSTOP) while it runs the last call: with ``speculative=True`` a second copy
    on the other worker ends the run long before the stopped worker is declared lost; without
    it the run waits for that (its calls run again elsewhere, as they did before)."""
    a, b = (start_worker(threads=2, name=n, extra=NO_SANDBOX) for n in ("a", "b"))
    n, marks = 8, tmp_path / "marks"
    lost_after = 30 if mode == "speculative" else 3
    main = run_main(workspace, mode, n, marks, f"{a.address},{b.address}",
                    {"DISTRIB_LOST_AFTER": str(lost_after), "DISTRIB_HEARTBEAT": "0.5"})
    stopped: Worker | None = None
    with ended(main):
        try:
            last = wait_for(lambda: next(marks.glob(f"start-{n - 1}-*"), None), 60,
                            "the last call to start")
            stopped = worker_of(int(last.name.split("-")[2]), [a, b])
            os.kill(stopped.pid, signal.SIGSTOP)
            at = time.time()
            wait_for(lambda: (marks / "finished").exists(), 60, "the run to finish")
            took = time.time() - at
        finally:
            if stopped is not None:
                os.kill(stopped.pid, signal.SIGCONT)
        (marks / "release").write_text("")
        out, err = finish(main, timeout=60)
    assert out.splitlines()[-1] == "RESULTS True True", (out, err)
    # Measured (printed with -s): how long after the stop the run ended, and how far its last
    # call ended behind the others (those that had no second copy).
    copied = {line.split("#")[1].split()[0] for line in err.splitlines()
              if "a second copy starts" in line}
    ends = {line.split()[1]: float(line.split()[3]) for line in out.splitlines()
            if line.startswith("DONE")}
    others = max((t for task_id, t in ends.items() if task_id not in copied), default=0.0)
    print(f"{mode}: the run ended {took:.2f} s after the stop, "
          f"{max(ends.values()) - others:.2f} s after the calls without a second copy")
    declared = f"is silent for {lost_after} s: declared lost"
    if mode == "speculative":
        copies = err.count("a second copy starts on worker")
        assert copies >= 1, err
        assert declared not in err, err  # it did not wait for the loss
        assert took < lost_after, took  # (generous: measured about 1 s, see above)
        assert len(runs(marks, "start")) <= n + copies
    else:
        assert declared in err, err
        assert "a second copy" not in err
        assert took >= lost_after - 1  # the run waited for the loss


def test_the_losing_copy_is_cancelled_and_the_outcome_delivered_once(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    """The last two calls take a minute on a slow worker; a worker that joins once they run
    gets their second copies, which end first: the slow ones are stopped there (while the Main
    still runs), each call has one outcome, and the side effects are the copies started."""
    slow = start_worker(threads=2, name="slow", extra=NO_SANDBOX, env={"SPEC_SLOW": "1"})
    port = free_port()
    n, marks = 6, tmp_path / "marks"
    main = run_main(workspace, "speculative", n, marks, f"{slow.address},127.0.0.1:{port}",
                    {"DISTRIB_LOST_AFTER": "120"})
    with ended(main):
        # The fast worker starts once every call is on the slow one (the only one there).
        wait_for(lambda: len(runs(marks, "start")) == n, 60, "all calls to start on the slow "
                 "worker")
        start_worker(threads=2, name="fast", extra=NO_SANDBOX, listen=f"127.0.0.1:{port}")
        wait_for(lambda: (marks / "finished").exists(), 60, "the run to finish")
        # The losers are stopped on the slow worker while their Main is still there.
        wait_for(lambda: (s := slow.status())["busy"] == 0 and s["queued"] == 0, 30,
                 "the slow worker to stop the losing copies")
        (marks / "release").write_text("")
        out, err = finish(main, timeout=60)
    assert out.splitlines()[-1] == "RESULTS True True", (out, err)
    assert err.count("a second copy starts on worker fast") == 2, err
    assert err.count("the copy on worker slow (") == 2, err
    assert runs(marks, "start") == sorted([str(i) for i in range(n)] + [str(n - 2), str(n - 1)])
    assert runs(marks, "end") == [str(i) for i in range(n)]  # the losers never ended
    done = [line.split() for line in out.splitlines() if line.startswith("DONE")]
    assert sorted(worker for _, _, worker, _ in done[-2:]) == ["fast", "fast"]

"""A task's whole process tree is its own: counted against the owner's memory limits, and
ended with the task, with its executor, and with the worker. Real daemons, hostile tasks."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import psutil
import pytest

from tests.helpers import PYTHON, Worker, Workspace, ended, wait_for

# Tests that look for a task's processes by the pids the task saw run without a sandbox: in
# one those are its PID namespace's (test_sandbox.py has that model's own).
UNBOXED = ("--no-sandbox",)

TASKS = """
    import os, subprocess, sys, threading, time
    from distrib import distributed

    # A child that holds ``mb`` MB, filled (resident) 64 MB at a time, for ``hold`` seconds.
    HOG = '''
    import sys, time
    held = []
    for _ in range(int(sys.argv[1]) // 64):
        held.append(bytearray(b"x") * (64 << 20))
        time.sleep(0.02)
    time.sleep(float(sys.argv[2]))
    '''

    @distributed(retries=0)
    def hog_children(count, mb, hold=600):
        children = [subprocess.Popen([sys.executable, "-c", HOG, str(mb), str(hold)])
                    for _ in range(count)]
        for child in children:
            child.wait()
        return "not stopped"

    def _setsid_loop():
        # Forked twice over, in a session of its own: its parent exits, so it is orphaned.
        middle = os.fork()
        if middle == 0:
            os.setsid()
            if os.fork() == 0:
                while True:
                    pass
            os._exit(0)
        os.waitpid(middle, 0)

    def _forked_sleepers(count):
        pids = []
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                time.sleep(600)
                os._exit(0)
            pids.append(pid)
        return pids

    @distributed(retries=0)
    def leave_processes(count, hold):
        before = set(_children_now())
        pids = _forked_sleepers(count)
        _setsid_loop()
        pids += [pid for pid in _children_now() if pid not in before and pid not in pids]
        print("PIDS", *pids, flush=True)
        time.sleep(max(hold, 0))
        if hold < 0:
            os._exit(3)  # (the executor dies: what it leaves is adopted by the daemon)
        return pids

    @distributed
    def scheduling(settled):
        # (a group's niceness may wait its turn: the kernel allows one change per 0.1 s)
        deadline = time.monotonic() + 60
        while True:
            with open("/proc/self/autogroup") as f:
                group = f.read().split()  # (empty in the boot's default group)
            if not settled or group[-1:] != ["0"] or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return os.getsid(0), group[-1] if group else "-", os.getpriority(os.PRIO_PROCESS, 0)

    @distributed(timeout=8, retries=0)  # (time to fork them all on loaded cores)
    def leave_and_hang(count):
        return leave_processes.__wrapped__(count, 600)

    def _children_now():
        # (the orphaned loop is this executor's child: it is their subreaper)
        me = str(os.getpid())
        out = []
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{name}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        out.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
        return out

    ticks = []

    def _tick():
        while True:
            ticks.append(time.monotonic())
            time.sleep(0.01)

    @distributed
    def leave_thread():
        threading.Thread(target=_tick, daemon=True).start()
        return os.getpid()

    def _square(x):
        return x * x

    @distributed
    def pool_map():
        import multiprocessing
        with multiprocessing.Pool(2) as pool:  # (its processes and threads end with it)
            return sum(pool.map(_square, range(10)))

    @distributed
    def watch_for_threads():
        seen = len(ticks)
        time.sleep(0.5)
        return os.getpid(), len(ticks) - seen
    """


def _running(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (a zombie has ended)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _kill(pids: list[int]) -> None:
    for pid in _running(pids):
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass


def _crash(workspace: Workspace, worker, call: str) -> str:
    """Run ``call`` (of tasks.py) on ``worker``, which stops it: the WorkerCrashed message."""
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", f"""
        import distrib, tasks

        if __name__ == "__main__":
            try:
                print("DONE", tasks.{call}.unwrap(timeout=120))
            except distrib.WorkerCrashed as exc:
                print("CRASHED", exc)
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, timeout=180)
    assert out.stdout.startswith("CRASHED"), (out.stdout, out.stderr[-3000:])
    return out.stdout


def test_a_child_over_the_task_memory_limit_is_stopped_and_named(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=1, extra=("--max-task-memory", "1G"))
    message = _crash(workspace, worker, "hog_children(1, 3072)")
    assert "more than worker w0's memory limit for a task (1G, its --max-task-memory)" \
        in message
    child = re.search(r"a child process of the task \(pid (\d+), [\d,]+ MB\)", message)
    assert child, message
    pid = int(child.group(1))
    wait_for(lambda: not _running([pid]), 10, "the child to be gone")
    assert re.search(rf"stopping executor \d+ \(task \d+\): .*pid {pid}", worker.log())


@pytest.mark.alone  # (four processes fill memory at once)
def test_children_over_the_total_memory_limit_are_stopped(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=1, extra=("--max-memory", "4G"))
    message = _crash(workspace, worker, "hog_children(4, 2048)")
    assert "more than its memory limit (4G, its --max-memory)" in message
    assert "with 4 processes it started" in message
    assert "more than its memory limit (4G, its --max-memory)" in worker.log()


@pytest.mark.long
def test_the_processes_a_task_leaves_are_gone_soon_after_it_ends(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=1, extra=UNBOXED)
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import time
        import psutil
        import distrib, tasks

        if __name__ == "__main__":
            pids = tasks.leave_processes(200, 0).unwrap(timeout=120)
            ended = time.monotonic()
            print("LEFT", len(pids), flush=True)
            def running():
                out = []
                for pid in pids:
                    try:
                        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                            out.append(pid)
                    except psutil.NoSuchProcess:
                        pass
                return out
            while running() and time.monotonic() < ended + 30:  # (a generous deadline)
                time.sleep(0.02)
            print("RUNNING", *running())
            print("AGAIN", len(tasks.leave_processes(3, 0).unwrap(timeout=120)))
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, timeout=180)
    pids = [int(x) for x in out.stdout.split("PIDS", 1)[-1].split("\n")[0].split()] \
        if "PIDS" in out.stdout else []
    try:
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.splitlines()
        assert "LEFT 201" in lines, out.stdout  # 200 forked, and the orphaned loop
        assert "RUNNING" in lines, out.stdout  # (none left soon after the result came)
        assert "AGAIN 4" in lines  # (a new executor)
        log = worker.log()
        assert re.search(r"executor \d+ ended: task leave_processes left 201 processes running",
                         log), log[-3000:]
    finally:
        _kill(pids)


@pytest.mark.long
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_process_of_a_task_outlives_the_worker(
        stop: signal.Signals, workspace: Workspace, start_worker) -> None:
    # (killed with -9, the daemon kills nothing: each executor sees it is gone and kills
    # its own tree)
    worker = start_worker(threads=1, extra=UNBOXED)
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import distrib, tasks

        if __name__ == "__main__":
            try:
                tasks.leave_processes(200, 600).unwrap(timeout=300)
            except distrib.DistribError as exc:
                print("ENDED", type(exc).__name__)
        """)
    pids: list[int] = []
    main = subprocess.Popen([PYTHON, "main.py"], cwd=workspace.root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ,
                                 "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
                                 "DISTRIB_WORKERS": worker.address})
    with ended(main):
        try:
            assert main.stdout is not None
            line = main.stdout.readline()  # (the task's output, forwarded)
            assert "PIDS" in line, line  # ([w0] PIDS ...)
            pids = [int(x) for x in line.split("PIDS", 1)[1].split()]
            assert len(_running(pids)) == 201
            worker.proc.send_signal(stop)
            worker.proc.wait(60)
            wait_for(lambda: not _running(pids), 10, "the task's processes to be gone")
        finally:
            _kill(pids)
            main.kill()
            main.communicate()


def left_by(workspace: Workspace, worker: Worker, call: str,
            caught: str) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """Run ``tasks.CALL`` (it prints the pids of the processes it left) on ``worker``, which
    fails it with ``distrib.CAUGHT``: what the Main printed, and those pids."""
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", f"""
        import distrib, tasks

        if __name__ == "__main__":
            try:
                tasks.{call}.unwrap(timeout=120)
            except distrib.{caught} as exc:
                print("{caught}", exc)
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, timeout=180)
    pids = [int(x) for x in out.stdout.split("PIDS", 1)[1].split("\n")[0].split()] \
        if "PIDS" in out.stdout else []
    return out, pids


def test_the_processes_of_a_task_whose_executor_died_are_killed_by_the_daemon(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=1, extra=UNBOXED)
    out, pids = left_by(workspace, worker, "leave_processes(20, -1)", "WorkerCrashed")
    try:
        assert "WorkerCrashed" in out.stdout and len(pids) == 21, (out.stdout,
                                                                   out.stderr[-3000:])
        wait_for(lambda: not _running(pids), 10, "the task's processes to be gone")
        assert re.search(r"killed \d+ process\(es\) left running by tasks", worker.log())
    finally:
        _kill(pids)


def test_the_processes_of_a_task_past_its_timeout_are_killed_with_it(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=1, extra=UNBOXED)
    out, pids = left_by(workspace, worker, "leave_and_hang(20)", "TaskTimeout")
    try:
        assert "TaskTimeout" in out.stdout and len(pids) == 21, (out.stdout,
                                                                 out.stderr[-3000:])
        wait_for(lambda: not _running(pids), 10, "the task's processes to be gone")
    finally:
        _kill(pids)


def test_a_thread_a_task_leaves_does_not_run_into_the_next_task(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=1)
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import tasks

        if __name__ == "__main__":
            first = tasks.leave_thread().unwrap(timeout=120)
            second, ticks = tasks.watch_for_threads().unwrap(timeout=120)
            print(first != second, ticks)
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["True", "0"]  # another executor, and no tick meanwhile
    assert re.search(r"executor \d+ ended: task leave_thread left 1 thread running",
                     worker.log())


def test_a_task_that_leaves_nothing_keeps_its_executor(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=1)
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import tasks

        if __name__ == "__main__":
            # Tasks that wait for their children, or whose pool ended: nothing left.
            first, _ = tasks.watch_for_threads().unwrap(timeout=120)
            print(tasks.hog_children(1, 0, 0).unwrap(timeout=120))
            print(tasks.pool_map().unwrap(timeout=120))
            second, _ = tasks.watch_for_threads().unwrap(timeout=120)
            print(first == second)
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["not", "stopped", "285", "True"]
    assert "ended: task" not in worker.log()


@pytest.mark.skipif(not os.path.exists("/proc/self/autogroup"),
                    reason="this kernel groups no processes by session (no autogroup)")
@pytest.mark.parametrize("extra", [UNBOXED, ()], ids=["unsandboxed", "sandboxed"])
def test_executors_run_at_the_owners_niceness_against_other_sessions(
        workspace: Workspace, start_worker, extra: tuple[str, ...]) -> None:
    # The kernel shares the CPU between sessions first (autogroup): an executor in a session
    # of its own at nice 0 would weigh as much as the daemon with its Mains, or as the
    # owner's whole desktop.
    worker = start_worker(threads=1, extra=(*extra, "--nice", "10"))
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import tasks

        if __name__ == "__main__":
            print("GOT", *tasks.scheduling(%s).unwrap(timeout=120))
        """ % (not extra))
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, timeout=180)
    assert "GOT" in out.stdout, (out.stdout, out.stderr[-3000:])
    session, group_nice, nice = out.stdout.split("GOT", 1)[1].split()[:3]
    assert nice == "10"
    if extra:  # in the daemon's session: its group, whose niceness the owner gave it
        assert int(session) == os.getsid(worker.pid)
    else:  # a session of the sandbox's own: its group is as nice as the owner says
        assert group_nice == "10"

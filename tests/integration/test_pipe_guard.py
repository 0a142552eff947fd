"""A Main's code holds what the worker waits on: a task its executor's pipe (it writes part of
a message and no more, or stops reading what the worker sends it), a script the template it
was imported in (it never answers a fork). The worker's one loop serves every Main: it must go
on serving the others (and its owner) meanwhile, and end what is held with its Main."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.helpers import PYTHON, TASKS, Workspace, ended, wait_for
from tests.integration.test_keys import keygen, keyed_worker

HOLD = """
    import os, signal, struct, sys, time
    from distrib import distributed

    @distributed
    def large(n):
        time.sleep(1.0)  # (its caller has stopped by then)
        return b"x" * n

    @distributed
    def hold(how):
        from distrib.executor import _subcalls
        print("HOLDING", flush=True)
        if how == "part":  # a header that promises a 10 MB frame, and 8 bytes of it
            _subcalls.channel.pipe.sock.sendall(
                struct.pack("<II", 1, 1) + struct.pack("<Q", 10_000_000) + b"\\x90" + b"x" * 8)
            time.sleep(600)
        call = large(16_000_000)  # more than the pipe holds, for a reader that stopped
        os.kill(os.getpid(), signal.SIGSTOP)
        return len(call.unwrap())

    if __name__ == "__main__":
        hold(sys.argv[1]).unwrap()
    """

STEADY = """
    import distrib
    import tasks

    if __name__ == "__main__":
        print("RESULT", distrib.gather(tasks.sleeper.map([0.05] * 20), timeout=120) == [0.05] * 20)
    """


@pytest.mark.parametrize("how", ["part", "unread"])
def test_a_task_holding_its_pipe_holds_neither_the_worker_nor_the_other_mains(
        how: str, workspace: Workspace, start_worker, tmp_path: Path) -> None:
    hostile, steady = keygen(tmp_path / "hostile.key"), keygen(tmp_path / "steady.key")
    worker, _ = keyed_worker(start_worker, tmp_path, "lent", [hostile, steady], threads=3)
    shutil.copy(TASKS, workspace.root / "tasks.py")
    workspace.write("hold.py", HOLD)
    workspace.write("steady.py", STEADY)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": f"{worker.address} {worker.public_key}"}
    with ended(subprocess.Popen([PYTHON, "hold.py", how], cwd=workspace.root, text=True,
                                env={**env, "DISTRIB_KEY": str(tmp_path / "hostile.key")},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)) as holder:
        assert holder.stdout is not None
        line = holder.stdout.readline()  # (the task's output, as its Main prints it)
        assert "HOLDING" in line, holder.stderr.read() if holder.poll() is not None else line
        for _ in range(2):  # (the second: long after the held message's time has come)
            out = subprocess.run([PYTHON, "steady.py"], cwd=workspace.root, text=True,
                                 env={**env, "DISTRIB_KEY": str(tmp_path / "steady.key")},
                                 capture_output=True, timeout=100)
            assert out.stdout.splitlines() == ["RESULT True"], out.stderr[-3000:]
        assert worker.status()["state"] == "serving"
        assert holder.poll() is None  # (its own task still waits: it holds only itself)
        holder.kill()
        finish_killed(holder)
    # The held executor ends with its Main (the worker sees it leave within its lost-after
    # time), as the other Main's did.
    wait_for(lambda: not _executors(worker.pid), what="the executors to end with their Mains")
    assert worker.proc.poll() is None and worker.status()["state"] == "serving"


def _executors(pid: int) -> list[psutil.Process]:
    """The executor processes (and templates) below process ``pid``."""
    found = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if "distrib.executor._tasks" in " ".join(proc.cmdline()) and \
                    proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def finish_killed(proc: subprocess.Popen[str]) -> None:
    """Reap a script the test killed, and close its pipes."""
    proc.communicate(timeout=60)


STALL = """
    import os, sys, time
    from distrib import distributed

    def stall(*args):
        print("STALLING", file=sys.stderr, flush=True)  # (to the worker's log)
        time.sleep(600)

    # Imported in its template too: there, every fork asked of it waits for good
    # ("_fork_executor"), or each executor forked never says its pid ("_forked_executor").
    frame = sys._getframe()
    while frame is not None and "_fork_executor" not in frame.f_globals:
        frame = frame.f_back
    if frame is not None:
        frame.f_globals[os.environ["HOLD"]] = stall

    @distributed
    def one():
        return 1

    if __name__ == "__main__":
        print("ONE", one().unwrap(timeout=120))
    """


@pytest.mark.parametrize("hold", ["_fork_executor", "_forked_executor"])
def test_a_template_that_never_answers_a_fork_holds_neither_the_worker_nor_the_other_mains(
        hold: str, workspace: Workspace, start_worker, tmp_path: Path) -> None:
    hostile, steady = keygen(tmp_path / "hostile.key"), keygen(tmp_path / "steady.key")
    worker, _ = keyed_worker(start_worker, tmp_path, "lent", [hostile, steady], threads=3,
                             env={"DISTRIB_FORK_TIMEOUT": "600"})  # (no answer is waited for)
    shutil.copy(TASKS, workspace.root / "tasks.py")
    workspace.write("stall.py", STALL)
    workspace.write("steady.py", STEADY)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": f"{worker.address} {worker.public_key}"}
    with ended(subprocess.Popen([PYTHON, "stall.py"], cwd=workspace.root, text=True,
                                env={**env, "DISTRIB_KEY": str(tmp_path / "hostile.key"),
                                     "HOLD": hold},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)) as staller:
        wait_for(lambda: "STALLING" in worker.log(), what="the template to hold a fork")
        out = subprocess.run([PYTHON, "steady.py"], cwd=workspace.root, text=True,
                             env={**env, "DISTRIB_KEY": str(tmp_path / "steady.key")},
                             capture_output=True, timeout=100)
        assert out.stdout.splitlines() == ["RESULT True"], out.stderr[-3000:]
        assert worker.status()["state"] == "serving"
        # (still held: the other Main was served while the template held its fork, not after)
        after = worker.log().split("STALLING", 1)[1]
        assert not re.search("did not (answer a fork|fork|say its pid)", after), after
        staller.kill()
        finish_killed(staller)
    wait_for(lambda: not _executors(worker.pid), what="the template to end with its Main")
    assert worker.proc.poll() is None and worker.status()["state"] == "serving"

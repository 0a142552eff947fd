"""A task holds its executor's pipe to the worker: it writes part of a message and no more, or
stops reading what the worker sends it. The worker's one loop serves every Main: it must go on
serving the others (and its owner) meanwhile, and end that executor with its Main."""

from __future__ import annotations

import os
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

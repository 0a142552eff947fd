"""What a hostile task cannot do to the worker's owner and to the other Mains, even where no
sandbox hides the worker from it: command the worker through its control socket."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from distrib.worker._control import send
from tests.helpers import PYTHON, TASKS, Workspace, ended, finish, wait_for
from tests.integration.test_keys import keygen, keyed_worker

TAKE_OVER = """
    import sys
    from pathlib import Path
    from distrib import distributed

    @distributed
    def take_over(cache, pid):
        # (the daemon's command line, /proc/<ppid>/cmdline, names both to any task)
        from distrib.worker._control import send
        out = []
        for command in ("pause", "drain"):
            try:
                out.append(["ANSWER", send(Path(cache), command, pid)])
            except Exception as exc:
                out.append([type(exc).__name__, str(exc)])
        return out

    if __name__ == "__main__":
        for kind, text in take_over(sys.argv[1], int(sys.argv[2])).unwrap(timeout=120):
            print(kind, text)
    """

STEADY = """
    import distrib
    import tasks

    if __name__ == "__main__":
        print("RESULT", distrib.gather(tasks.sleeper.map([0.1] * 30), timeout=120) == [0.1] * 30)
    """


def test_a_task_cannot_pause_or_drain_its_worker(workspace: Workspace, start_worker,
                                                 tmp_path: Path) -> None:
    hostile, steady = keygen(tmp_path / "hostile.key"), keygen(tmp_path / "steady.key")
    worker, _ = keyed_worker(start_worker, tmp_path, "lent", [hostile, steady], threads=3)
    shutil.copy(TASKS, workspace.root / "tasks.py")
    workspace.write("take_over.py", TAKE_OVER)
    workspace.write("steady.py", STEADY)
    env = {"DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": f"{worker.address} {worker.public_key}"}
    with ended(subprocess.Popen([PYTHON, "steady.py"], cwd=workspace.root, text=True,
                                env={**os.environ, **env,
                                     "DISTRIB_KEY": str(tmp_path / "steady.key")},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)) as other:
        out = workspace.run("take_over.py", str(worker.cache_dir), str(worker.pid),
                            env={**env, "DISTRIB_KEY": str(tmp_path / "hostile.key")})
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.splitlines()
        assert [line.split()[0] for line in lines] == ["ConnectionFailed"] * 2, out.stdout
        assert all("refused the command" in line and "only the worker's owner" in line
                   for line in lines), out.stdout
        assert worker.status()["state"] == "serving"
        stdout, stderr = finish(other)
        assert stdout.splitlines() == ["RESULT True"], stderr[-3000:]
    wait_for(lambda: "refused a command on its control socket from process" in worker.log(),
             what="the refusal in the worker's log")
    log = worker.log()
    assert log.count("refused a command on its control socket") == 1  # once per process
    assert "as its owner asked" not in log  # nothing changed
    assert worker.proc.poll() is None and worker.status()["state"] == "serving"
    # The owner, from outside, still commands it.
    assert send(worker.cache_dir, "state").startswith("serving")

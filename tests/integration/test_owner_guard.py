"""What a hostile task cannot do to the worker's owner and to the other Mains, even where no
sandbox hides the worker from it: command the worker through its control socket."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from distrib.worker._control import send
from tests.helpers import (
    PYTHON, TASKS, Workspace, ended, finish, rewrite_keeping_size_and_times, wait_for)
from tests.integration.test_keys import keygen, keyed_worker

# A sandbox stops these hostile tasks before they reach the guards tested here (the control
# socket and the cache are not in it; trees are read-only there): their workers lend without
# one, so the guards themselves are tested (test_sandbox.py tests the sandbox).
UNBOXED = ("--no-sandbox",)

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
    worker, _ = keyed_worker(start_worker, tmp_path, "lent", [hostile, steady], threads=3,
                             extra=UNBOXED)
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


READ = """
    from distrib import distributed, gather
    import settings

    @distributed
    def read(i):
        import settings
        with open("data/input.txt") as f:
            return f.read().strip(), settings.VALUE

    if __name__ == "__main__":
        print("READ", sorted(set(gather([read(i) for i in range(8)], timeout=120))))
    """


def test_a_tree_changed_keeping_sizes_and_times_is_caught_and_built_again(
        workspace: Workspace, start_worker) -> None:
    import py_compile

    workspace.write("data/input.txt", "41\n")
    workspace.write("settings.py", "VALUE = 'shipped'\n")
    workspace.write("main.py", READ)
    worker = start_worker(threads=2, name="w")

    def tamper() -> None:
        envs = [p for p in (worker.cache_dir / "envs").iterdir() if not p.name.startswith(".")]
        assert len(envs) == 1
        rewrite_keeping_size_and_times(envs[0] / "data" / "input.txt", b"66\n")
        rewrite_keeping_size_and_times(envs[0] / "settings.py", b"VALUE = 'hacked!'\n")
        # and its compiled module, as compiling the changed source gives (same header)
        compiled = next((envs[0] / "__pycache__").glob("settings.*.pyc"))
        py_compile.compile(str(envs[0] / "settings.py"), cfile=str(workspace.root / "x.pyc"),
                           dfile=str(envs[0] / "settings.py"))
        rewrite_keeping_size_and_times(compiled, (workspace.root / "x.pyc").read_bytes())
        (workspace.root / "x.pyc").unlink()

    expected = ["READ [('41', 'shipped')]"]
    env = {"DISTRIB_WORKERS": worker.address}
    assert workspace.run("main.py", env=env).stdout.splitlines() == expected
    tamper()  # between two runs on the same daemon
    out = workspace.run("main.py", env=env)
    assert out.stdout.splitlines() == expected, out.stderr[-3000:]
    assert "drifted from its manifest (__pycache__/settings." in worker.log()
    assert "data/input.txt, settings.py); building it again" in worker.log()
    worker.stop()
    tamper()  # and while no daemon runs: a new one on the same cache folder checks too
    worker = start_worker(threads=2, name="w")
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.stdout.splitlines() == expected, out.stderr[-3000:]
    assert "drifted from its manifest (data/input.txt, settings.py)" in worker.log()


VANDAL = """
    import sys
    from distrib import distributed

    @distributed
    def rewrite_others(cache):
        # Every other tree's data/input.txt, in place, its size and times set back.
        import os, pathlib
        done = 0
        for path in pathlib.Path(cache, "envs").glob("*/data/input.txt"):
            before = path.stat()
            with open(path, "r+b") as f:
                f.write(b"66\\n")
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            done += 1
        return done

    if __name__ == "__main__":
        print("REWROTE", rewrite_others(sys.argv[1]).unwrap(timeout=120))
    """


def test_a_task_that_rewrites_another_mains_tree_does_not_change_its_results(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    victim, vandal = keygen(tmp_path / "victim.key"), keygen(tmp_path / "vandal.key")
    worker, _ = keyed_worker(start_worker, tmp_path, "lent", [victim, vandal], extra=UNBOXED)
    workspace.write("data/input.txt", "41\n")
    workspace.write("settings.py", "VALUE = 'shipped'\n")
    workspace.write("main.py", READ)
    other = Workspace(tmp_path / "vandal", workspace.cache_dir)
    other.root.mkdir()
    other.write("main.py", VANDAL)
    env = {"DISTRIB_WORKERS": f"{worker.address} {worker.public_key}"}
    expected = ["READ [('41', 'shipped')]"]
    out = workspace.run("main.py", env={**env, "DISTRIB_KEY": str(tmp_path / "victim.key")})
    assert out.stdout.splitlines() == expected, out.stderr[-3000:]
    out = other.run("main.py", str(worker.cache_dir),
                    env={**env, "DISTRIB_KEY": str(tmp_path / "vandal.key")})
    assert out.stdout.splitlines() == ["REWROTE 1"], out.stderr[-3000:]
    out = workspace.run("main.py", env={**env, "DISTRIB_KEY": str(tmp_path / "victim.key")})
    assert out.stdout.splitlines() == expected, out.stderr[-3000:]
    assert "drifted from its manifest (data/input.txt)" in worker.log()


HOLD = """
    import sys
    from distrib import distributed, gather

    @distributed
    def read(i):
        with open("data/input.txt") as f:
            return f.read().strip()

    @distributed
    def hold(started, release):
        import pathlib, time
        pathlib.Path(started).touch()
        while not pathlib.Path(release).exists():
            time.sleep(0.05)
        with open("data/input.txt") as f:
            return f.read().strip()

    if __name__ == "__main__":
        print("BEFORE", sorted(set(gather([read(i) for i in range(4)], timeout=120))))
        print("HELD", hold(sys.argv[1], sys.argv[2]).unwrap(timeout=120))
        print("AFTER", sorted(set(gather([read(i) for i in range(4)], timeout=120))))
    """


def test_a_tree_rewritten_while_a_run_uses_it_is_built_again_and_its_task_rerun(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    victim, vandal = keygen(tmp_path / "victim.key"), keygen(tmp_path / "vandal.key")
    worker, _ = keyed_worker(start_worker, tmp_path, "lent", [victim, vandal], extra=UNBOXED)
    workspace.write("data/input.txt", "41\n")
    workspace.write("main.py", HOLD)
    other = Workspace(tmp_path / "vandal", workspace.cache_dir)
    other.root.mkdir()
    other.write("main.py", VANDAL)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": f"{worker.address} {worker.public_key}"}
    started, release = tmp_path / "started", tmp_path / "release"
    with ended(subprocess.Popen([PYTHON, "main.py", str(started), str(release)],
                                cwd=workspace.root, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                env={**env, "DISTRIB_KEY": str(tmp_path / "victim.key")})) as run:
        wait_for(started.exists, what="the victim's long task to start")
        out = other.run("main.py", str(worker.cache_dir),
                        env={**env, "DISTRIB_KEY": str(tmp_path / "vandal.key")})
        assert out.stdout.splitlines() == ["REWROTE 1"], out.stderr[-3000:]
        wait_for(lambda: "drifted from its manifest (data/input.txt)" in worker.log(),
                 what="the worker to find the tree changed while the victim's run uses it")
        release.touch()
        stdout, stderr = finish(run)
    assert stdout.splitlines() == ["BEFORE ['41']", "HELD 41", "AFTER ['41']"], stderr[-3000:]

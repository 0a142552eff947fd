"""Task writes are private: no other task, run or Main sees them, and environments stay whole."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from tests.helpers import PYTHON, Worker, Workspace, ended, finish

POKE = """
    import os
    from distrib import distributed, gather

    @distributed
    def poke(i):
        with open(f"mine-{i}.txt", "w") as f:            # into the working folder
            f.write("x")
        with open(f"data/out-{i}.txt", "w") as f:        # into a shipped subfolder
            f.write("x")
        with open("data/input.txt") as f:                # a shipped file ...
            v = f.read().strip()
        with open("data/input.txt", "w") as f:           # ... overwritten
            f.write(str(int(v) + 1))
        mine = sorted(n for n in os.listdir(".") if n.startswith("mine-"))
        return sorted(os.listdir("data")), mine, v

    @distributed
    def vandal(i):
        if i % 2:
            os.remove("data/input.txt")
        else:
            os.rename("data/input.txt", "data/moved.txt")
        os.makedirs("data/new/deeper", exist_ok=True)
        with open("data/new/deeper/f.txt", "w") as f:
            f.write("x")
        os.truncate("main.py", 0)
        return sorted(os.listdir("data"))

    def clean(results):
        return all(data == ["input.txt", f"out-{i}.txt"] and mine == [f"mine-{i}.txt"]
                   and v == "41" for i, (data, mine, v) in enumerate(results))

    if __name__ == "__main__":
        print("POKE", clean(gather([poke(i) for i in range(40)], timeout=120)))
        wrecked = gather([vandal(i) for i in range(8)], timeout=120)
        print("VANDAL", [w for w in wrecked[:2]])
        print("AFTER", clean(gather([poke(i) for i in range(16)], timeout=120)))
    """


def env_matches_workspace(worker: Worker, workspace: Workspace) -> bool:
    """Hash every file of the worker's environment(s) and compare with the workspace."""
    def tree(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}

    envs = [p for p in (worker.cache_dir / "envs").iterdir() if not p.name.startswith(".")]
    want = tree(workspace.root)
    return bool(envs) and all(tree(env) == want for env in envs)


def test_task_writes_are_private_and_the_environment_stays_whole(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=4)
    workspace.write("data/input.txt", "41\n")
    workspace.write("main.py", POKE)
    for _ in range(2):  # a second run starts from the shipped files too
        out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.splitlines() == [
            "POKE True", "VANDAL [['moved.txt', 'new'], ['new']]", "AFTER True"]
        assert env_matches_workspace(worker, workspace)
    assert "task writes are private" in worker.log()


def test_two_mains_with_one_workspace_do_not_see_each_others_writes(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("data/input.txt", "41\n")
    workspace.write("main.py", POKE)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": worker.address}
    mains = [subprocess.Popen([PYTHON, "main.py"], cwd=workspace.root, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for main in mains:  # at the same time, on one worker, one environment
        with ended(main):
            assert finish(main)[0].splitlines()[0] == "POKE True"
    assert env_matches_workspace(worker, workspace)


READ = """
    from distrib import distributed, gather
    import settings

    @distributed
    def read(i):
        with open("data/input.txt") as f:
            return f.read().strip(), settings.VALUE

    if __name__ == "__main__":
        print("READ", sorted(set(gather([read(i) for i in range(8)], timeout=120))))
    """


def test_a_hand_corrupted_environment_is_built_again_before_it_is_used(
        workspace: Workspace, start_worker) -> None:
    workspace.write("data/input.txt", "41\n")
    workspace.write("settings.py", "VALUE = 'shipped'\n")
    workspace.write("main.py", READ)
    worker = start_worker(threads=2, name="w")

    def corrupt() -> None:
        envs = [p for p in (worker.cache_dir / "envs").iterdir() if not p.name.startswith(".")]
        assert len(envs) == 1
        (envs[0] / "data" / "input.txt").write_text("666\n")
        (envs[0] / "settings.py").write_text("VALUE = 'tampered'\n")

    expected = ["READ [('41', 'shipped')]"]
    env = {"DISTRIB_WORKERS": worker.address}
    assert workspace.run("main.py", env=env).stdout.splitlines() == expected
    corrupt()  # between two runs on the same daemon
    out = workspace.run("main.py", env=env)
    assert out.stdout.splitlines() == expected, out.stderr[-3000:]
    assert "drifted from its manifest (data/input.txt, settings.py" in worker.log()
    assert env_matches_workspace(worker, workspace)
    worker.stop()
    corrupt()  # and while no daemon runs: a new one on the same cache folder checks too
    worker = start_worker(threads=2, name="w")
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.stdout.splitlines() == expected, out.stderr[-3000:]
    assert "drifted from its manifest (data/input.txt, settings.py" in worker.log()
    assert env_matches_workspace(worker, workspace)

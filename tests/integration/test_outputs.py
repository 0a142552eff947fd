"""Files a task writes come back with its result (``outputs=``), checked before they land."""

from __future__ import annotations

import hashlib

import pytest

from tests.helpers import Workspace

SCRIPT = """
    import hashlib, os
    import distrib
    from distrib import distributed, gather

    @distributed(outputs=["results/**"])
    def produce(i):
        os.makedirs("results/sub", exist_ok=True)
        with open(f"results/{i}.txt", "w") as f:
            f.write(f"result {i}\\n")
        data = hashlib.sha256(str(i).encode()).digest() * (1_000_000 // 32)
        with open(f"results/sub/{i}.bin", "wb") as f:
            f.write(data)
        with open("scratch.tmp", "w") as f:          # not an output: stays on the worker
            f.write("x")
        return i

    @distributed(outputs="shared.txt")
    def same(i):
        with open("shared.txt", "w") as f:
            f.write(f"from {i}")
        return i

    @distributed(outputs="*.txt")
    def escape():
        import sys                                 # a hostile task forges its outputs
        executor = sys._getframe(1).f_globals      # (the executor's loop called this task)
        executor["_outputs"] = lambda isolation, globs: [("../escape.txt", b"gotcha")]
        return 1

    if __name__ == "__main__":
        print("GATHER", gather([produce(i) for i in range(20)], timeout=120) == list(range(20)))
        present = all(os.path.exists(f"results/{i}.txt") and os.path.exists(f"results/sub/{i}.bin")
                      for i in range(20))
        print("PRESENT", present, os.path.exists("scratch.tmp"))
        same(1).unwrap(timeout=60)
        same(2).unwrap(timeout=60)
        print("SAME", open("shared.txt").read())
        try:
            escape().unwrap(timeout=60)
        except distrib.WorkspaceError as exc:
            print("REFUSED", "bad path" in str(exc), "nothing was written" in str(exc))
    """


def test_outputs_come_back_byte_equal_and_bad_paths_are_refused(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2, env={"DISTRIB_MAX_MESSAGE_MB": "512"})
    workspace.write("main.py", SCRIPT)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [
        "GATHER True", "PRESENT True False", "SAME from 2", "REFUSED True True"]
    for i in range(20):
        assert (workspace.root / "results" / f"{i}.txt").read_text() == f"result {i}\n"
        want = hashlib.sha256(str(i).encode()).digest() * (1_000_000 // 32)
        assert (workspace.root / "results" / "sub" / f"{i}.bin").read_bytes() == want
    assert not (workspace.root.parent / "escape.txt").exists()
    assert "output file shared.txt was written by task same#" in out.stderr


EMPTY_FOLDER = """
    import os
    from distrib import distributed

    @distributed(outputs="results/*.txt")
    def produce(i):
        with open(f"results/{i}.txt", "w") as f:  # (as it would here: the folder is there)
            f.write(f"result {i}\\n")
        return sorted(os.listdir("runs"))

    if __name__ == "__main__":
        print([produce(i).unwrap(timeout=60) for i in range(3)])
    """


@pytest.mark.parametrize("sandbox", [True, False], ids=["sandbox", "no sandbox"])
def test_a_task_finds_the_workspaces_empty_folders_as_they_are_here(
        workspace: Workspace, start_worker, sandbox: bool) -> None:
    worker = start_worker(threads=2, extra=() if sandbox else ("--no-sandbox",))
    (workspace.root / "results").mkdir()
    (workspace.root / "runs" / "nested").mkdir(parents=True)
    workspace.write("main.py", EMPTY_FOLDER)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["[['nested'], ['nested'], ['nested']]"]
    for i in range(3):
        assert (workspace.root / "results" / f"{i}.txt").read_text() == f"result {i}\n"

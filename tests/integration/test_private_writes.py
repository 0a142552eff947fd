"""Every way a task can write leaves the next task on the same executor a clean tree, and
``outputs=`` still brings back what a task wrote, with the mode it gave it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import Workspace

NO_SANDBOX = ("--no-sandbox",)  # as the embedded local cluster runs its worker

TREE = {  # the shipped workspace besides the scripts: folders that exist, at some depth
    "top.txt": "top\n",
    "data/input.txt": "41\n",
    "data/one/mid.txt": "mid\n",
    "data/one/two/deep.txt": "deep\n",
    "lib/__init__.py": "",
    "lib/deep/__init__.py": "",
    "lib/deep/helper.py": "VALUE = 'shipped'\n",
    "results/keep.txt": "keep\n",
}

WRITES = """
    import errno, hashlib, os, shutil, stat, time
    from lib.deep import helper

    HERE = os.path.dirname(os.path.abspath(__file__))


    def tree():
        \"\"\"Every entry below the working folder: path, mode, mtime and content.\"\"\"
        out = [(".", oct(os.stat(".").st_mode))]
        for folder, dirs, files in os.walk("."):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(dirs + files):
                path = os.path.join(folder, name)
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        what = hashlib.sha256(f.read()).hexdigest()[:12]
                elif stat.S_ISLNK(st.st_mode):
                    what = os.readlink(path)
                else:
                    what = ""
                out.append((path, oct(st.st_mode), st.st_mtime_ns, what))
        return out


    def put(path, text="new"):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


    def append(path):
        with open(path, "a") as f:
            f.write("more")


    def rename_shipped_folder():
        try:  # (an overlay refuses it: a difference the README names)
            os.rename("data/one", "data/moved")
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise


    WRITES = {
        "new file at the top": lambda: put("new.txt"),
        "new file in a new folder": lambda: put("fresh/a/b/new.txt"),
        "new file in an existing folder": lambda: put("data/new.txt"),
        "new file three folders deep": lambda: put("data/one/two/new.txt"),
        "new folder in an existing folder": lambda: os.mkdir("data/one/two/newdir"),
        "overwrite at the top": lambda: put("top.txt", "changed"),
        "overwrite three folders deep": lambda: put("data/one/two/deep.txt", "changed"),
        "append": lambda: append("data/one/mid.txt"),
        "truncate": lambda: os.truncate("data/one/mid.txt", 0),
        "touch": lambda: os.utime("data/one/two/deep.txt", (0, 0)),
        "delete at the top": lambda: os.remove("top.txt"),
        "delete three folders deep": lambda: os.remove("data/one/two/deep.txt"),
        "delete a folder": lambda: shutil.rmtree("data/one"),
        "rename in a folder": lambda: os.rename("data/one/mid.txt", "data/one/renamed.txt"),
        "rename across folders": lambda: os.rename("data/one/two/deep.txt", "moved.txt"),
        "rename a shipped folder": rename_shipped_folder,
        "move a shipped folder": lambda: shutil.move("data/one", "data/moved"),
        "rename a new folder": lambda: (os.makedirs("data/one/new/deeper"),
                                        os.rename("data/one/new", "data/one/renamed")),
        "replace by a rename": lambda: (put("data/tmp.txt", "swapped"),
                                        os.replace("data/tmp.txt", "data/one/two/deep.txt")),
        "chmod a file": lambda: os.chmod("data/one/mid.txt", 0o600),
        "chmod a folder": lambda: os.chmod("data/one", 0o700),
        "chmod the working folder": lambda: os.chmod(".", 0o700),
        "symlink": lambda: os.symlink("../../top.txt", "data/one/link"),
        "hard link": lambda: os.link("top.txt", "data/one/two/hard.txt"),
        "through __file__, beside the script": lambda: put(os.path.join(HERE, "beside.txt")),
        "through __file__, over a module": lambda: put(helper.__file__, "VALUE = 'changed'"),
        "through __file__, beside a module": lambda: put(
            os.path.join(os.path.dirname(helper.__file__), "x.txt")),
    }
    """

SCRIPT = """
    import os, time
    from distrib import distributed
    from writes import WRITES, tree


    @distributed
    def write(kind):
        before = tree()
        WRITES[kind]()
        return os.getpid(), before


    @distributed
    def idle():
        # A task that begins well after the fresh view it runs in was made (a write by its
        # successor was missed when the check after it trusted that view's old times).
        time.sleep(0.1)
        return os.getpid(), tree()


    if __name__ == "__main__":
        pid, first = idle().unwrap(timeout=60)
        pids, leaks = {pid}, []
        for kind in WRITES:  # each write followed by a task that began long after its view
            for name, (pid, seen) in (("write", write(kind).unwrap(timeout=60)),
                                      ("idle", idle().unwrap(timeout=60))):
                pids.add(pid)
                if seen != first:
                    leaks.append((name, "after", kind, sorted(set(seen) ^ set(first))))
        previous = "idle"
        for kind in WRITES:  # and back to back: each begins at once in the view just made
            pid, seen = write(kind).unwrap(timeout=60)
            pids.add(pid)
            if seen != first:
                leaks.append(("write", "after", previous, sorted(set(seen) ^ set(first))))
            previous = kind
        print("LEAKS", leaks)
        print("EXECUTORS", len(pids))
    """


def _shipped(workspace: Workspace) -> None:
    for path, text in TREE.items():
        workspace.write(path, text)
    workspace.write("writes.py", WRITES)


@pytest.mark.parametrize("extra", [NO_SANDBOX, ()], ids=["no sandbox", "sandbox"])
def test_no_write_of_a_task_is_seen_by_the_next_task_on_its_executor(
        workspace: Workspace, start_worker, extra: tuple[str, ...]) -> None:
    _shipped(workspace)
    workspace.write("main.py", SCRIPT)
    worker = start_worker(threads=1, extra=extra)  # one executor runs every task, in turn
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["LEAKS []", "EXECUTORS 1"], out.stderr[-3000:]


ISSUE = """
    import os, time
    from distrib import distributed, gather

    @distributed
    def pre(i):
        time.sleep(0.1)  # (so that the writers begin well after the views they run in)
        return i

    @distributed(outputs=["results/**"])
    def child(i, tag):
        before = sorted(p for p in os.listdir("results") if open(f"results/{p}").read() == tag)
        with open(f"results/c{i}.txt", "w") as f:
            f.write(tag)
        return before        # must be [] for every task

    if __name__ == "__main__":
        gather([pre(i) for i in range(20)], timeout=120)
        print(gather([child(i, "T1") for i in range(8)], timeout=120))
    """


def test_writes_into_a_shipped_folder_stay_private_and_come_back_once(
        workspace: Workspace, start_worker) -> None:
    """The issue's case: tasks writing into a folder of the workspace saw earlier tasks'
    files, and their outputs brought those back again."""
    _shipped(workspace)
    workspace.write("main.py", ISSUE)
    worker = start_worker(threads=2, extra=NO_SANDBOX)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [str([[]] * 8)], out.stderr[-3000:]
    assert "was written by" not in out.stderr
    for i in range(8):
        assert (workspace.root / "results" / f"c{i}.txt").read_text() == "T1"
    assert (workspace.root / "results" / "keep.txt").read_text() == "keep\n"


OUTPUTS = """
    import os, time
    from distrib import distributed
    from writes import WRITES

    @distributed(outputs=["**/*.txt", "lib/**"])
    def write(kind):
        WRITES[kind]()

    @distributed
    def idle():
        time.sleep(0.1)  # (as in main.py)

    @distributed(outputs="modes/*")
    def modes():
        os.makedirs("modes", exist_ok=True)
        for name, mode in (("plain", None), ("script", 0o755), ("secret", 0o600),
                           ("shared", 0o666)):
            with open(f"modes/{name}", "w") as f:
                f.write(name)
            if mode is not None:
                os.chmod(f"modes/{name}", mode)

    if __name__ == "__main__":
        for kind in ["new file at the top", "new file in a new folder",
                     "new file three folders deep", "replace by a rename", "through __file__, beside the script",
                     "through __file__, beside a module", "through __file__, over a module"]:
            write(kind).unwrap(timeout=60)
            idle().unwrap(timeout=60)
        modes().unwrap(timeout=60)
    """

EXPECTED = {  # what the writes above leave in the Main's workspace
    "new.txt": "new",
    "fresh/a/b/new.txt": "new",
    "data/one/two/new.txt": "new",
    "data/one/two/deep.txt": "swapped",  # replaced by a rename
    "beside.txt": "new",
    "lib/deep/x.txt": "new",
    "lib/deep/helper.py": "VALUE = 'changed'",
    "data/input.txt": "41\n",  # untouched
    "data/one/mid.txt": "mid\n",
}


def test_outputs_bring_back_each_write_once_with_the_mode_the_task_gave(
        workspace: Workspace, start_worker) -> None:
    _shipped(workspace)
    workspace.write("main.py", OUTPUTS)
    umask = os.umask(0o022)  # (the worker and the Main inherit it)
    try:
        worker = start_worker(threads=1, extra=NO_SANDBOX)
        out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    finally:
        os.umask(umask)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "was written by" not in out.stderr  # (each file came back once, from its writer)
    for path, text in EXPECTED.items():
        assert (workspace.root / path).read_text() == text, path
    assert not (workspace.root / "data" / "tmp.txt").exists()
    modes = {p.name: p.stat().st_mode & 0o777 for p in Path(workspace.root, "modes").iterdir()}
    assert modes == {"plain": 0o644, "script": 0o755, "secret": 0o600, "shared": 0o644}

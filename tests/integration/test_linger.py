"""The local cluster's lingering daemon (``linger``): a script's next run attaches to the daemon
the last one left, sees its edits, and the daemon leaves after the linger period, when told
to stop, or when it was killed (its stale socket replaced)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from distrib._linger import running
from tests.helpers import PYTHON, Worker, Workspace, query_status, wait_for

SCRIPT = """
    import os
    import sys

    from distrib import distributed

    import mod

    @distributed
    def value():
        return mod.VALUE, os.getppid()  # (an executor's parent: the daemon, its subreaper)

    if __name__ == "__main__":
        print(*value().unwrap(timeout=60))
"""

LONG = """
    import os
    import sys
    import time

    from distrib import distributed

    @distributed
    def hold(path):
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".tmp", path)
        time.sleep(120)

    if __name__ == "__main__":
        hold(sys.argv[1]).unwrap(timeout=300)
"""


@pytest.fixture
def runtime() -> Iterator[Path]:
    """A runtime folder of this test's own (short: it holds the daemon's socket); what
    lingers there at the end is stopped by its pid."""
    where = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    yield where
    for folder in where.glob("distrib/local-*"):
        pid = running(folder)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not _alive(pid), 30, "the lingering daemon gone")
    shutil.rmtree(where, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _env(runtime: Path, linger: str = "1m") -> dict[str, str]:
    return {"XDG_RUNTIME_DIR": str(runtime), "DISTRIB_LINGER": linger}


def _value(workspace: Workspace, runtime: Path, linger: str = "1m") -> tuple[int, int]:
    """Run the script once; what its call returned: (mod.VALUE, the daemon's pid)."""
    out = workspace.run("main.py", env=_env(runtime, linger))
    assert out.returncode == 0, out.stderr[-3000:]
    value, pid = out.stdout.split()
    return int(value), int(pid)


def _folder(runtime: Path) -> Path:
    [folder] = runtime.glob("distrib/local-*")
    return folder


def _script(workspace: Workspace, value: int = 1) -> None:
    workspace.write("main.py", SCRIPT)
    workspace.write("mod.py", f"VALUE = {value}\n")


def test_a_second_run_attaches_and_sees_an_edited_module(
        workspace: Workspace, runtime: Path) -> None:
    _script(workspace)
    value, daemon = _value(workspace, runtime)
    assert value == 1 and _alive(daemon)
    folder = _folder(runtime)
    assert os.stat(folder).st_mode & 0o777 == 0o700
    assert os.stat(folder.parent).st_mode & 0o777 == 0o700
    assert running(folder) == daemon
    assert _value(workspace, runtime) == (1, daemon)  # the same daemon serves it
    workspace.write("mod.py", "VALUE = 2\n")
    assert _value(workspace, runtime) == (2, daemon)  # the edit travelled, not the old template
    # It shows in `distrib status`, and `distrib worker stop` ends it.
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           **_env(runtime)}
    status = subprocess.run([PYTHON, "-m", "distrib", "status", "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    [shown] = json.loads(status.stdout)
    assert shown["source"] == f"lingering local cluster, pid {daemon}"
    assert shown["name"] == "local" and shown["slots"] == 2 and not shown["problem"]
    stop = subprocess.run([PYTHON, "-m", "distrib", "worker", "stop"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.startswith("stopping"), stop.stdout
    wait_for(lambda: not _alive(daemon), 30, "the stopped daemon gone")
    assert running(folder) is None


def test_a_second_run_sends_only_the_files_that_changed(
        workspace: Workspace, runtime: Path) -> None:
    _script(workspace)
    workspace.write("data.txt", "a\n")
    # (the script's debug lines say what each run ships)
    workspace.write("main.py", "import logging\nlogging.basicConfig(level=logging.DEBUG)\n"
                    + textwrap.dedent(SCRIPT))

    def shipped() -> list[str]:
        nonlocal put
        out = workspace.run("main.py", env=_env(runtime))
        assert out.returncode == 0, out.stderr[-3000:]
        put = re.findall(r"put (\d+) of the workspace's \d+ files", out.stderr)
        return re.findall(r"shipping the workspace: (\d+) files", out.stderr)

    put: list[str] = []
    # main.py, mod.py and data.txt: put in the store while the daemon started, the rest
    # shipped once it listened
    first = shipped()
    assert sum(int(n) for n in put + first) == 3, (put, first)
    assert shipped() == [] and put == []  # the daemon has them all (and was up)
    workspace.write("mod.py", "VALUE = 2\n")
    assert shipped() == ["1"] and put == []


def test_files_added_or_edited_in_a_workspace_whose_listing_is_kept_reach_the_daemon(
        workspace: Workspace, runtime: Path) -> None:
    # Folders last changed long ago: each run keeps, and the next reuses, the list of files
    # instead of walking them; what changes in them still travels.
    _script(workspace)
    workspace.write("main.py", "import logging\nlogging.basicConfig(level=logging.DEBUG)\n"
                    + textwrap.dedent(SCRIPT).replace("os.getppid()", "os.getpid()"))
    (workspace.root / "pkg").mkdir()
    workspace.write("pkg/__init__.py", "")

    def age() -> None:
        for folder in (workspace.root, workspace.root / "pkg"):
            os.utime(folder, (1e9, 1e9))

    def run() -> tuple[int, str]:  # (no __pycache__ made: the folders move only as told)
        out = workspace.run("main.py", env={**_env(runtime), "PYTHONDONTWRITEBYTECODE": "1"})
        assert out.returncode == 0, out.stderr[-3000:]
        value, executor = out.stdout.split()
        return int(value), executor

    age()
    first = run()  # (walks the tree)
    # The run that reuses the listing is served by the first one's executor: what walking
    # imports (pathspec) is distrib's, not modules the Main's templates import ahead.
    assert first[0] == 1 and run() == first
    workspace.write("mod.py", "VALUE = 2\n")  # (in place: no folder moves)
    assert run()[0] == 2
    age()
    workspace.write("pkg/extra.py", "VALUE = 3\n")  # (a new file: its folder moves)
    workspace.write("mod.py", "from pkg.extra import VALUE\n")
    assert run()[0] == 3
    (workspace.root / "pkg" / "extra.py").unlink()  # (gone: the import fails on the worker)
    workspace.write("mod.py", "try:\n    from pkg.extra import VALUE\nexcept ImportError:\n"
                    "    VALUE = 4\n")
    assert run()[0] == 4


def test_the_embedded_cluster_runs_in_the_mains_interpreter_without_describing_it(
        workspace: Workspace, runtime: Path) -> None:
    # Its daemon is this interpreter with its packages: no metadata is read to tell it so.
    _script(workspace)
    workspace.write("main.py", "import logging\nlogging.basicConfig(level=logging.DEBUG)\n"
                    "import msgpack\n" + textwrap.dedent(SCRIPT))
    out = workspace.run("main.py", env=_env(runtime))
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"environment for workers: Python [\d.]+, no packages", out.stderr), \
        out.stderr[-3000:]
    assert int(out.stdout.split()[0]) == 1


def test_the_daemon_leaves_after_the_linger_period(
        workspace: Workspace, runtime: Path) -> None:
    _script(workspace)
    _, daemon = _value(workspace, runtime, linger="2s")
    wait_for(lambda: not _alive(daemon), 30, "the daemon leaving after 2 s with no Main")
    assert running(_folder(runtime)) is None


def test_a_killed_daemons_stale_socket_is_replaced(
        workspace: Workspace, runtime: Path) -> None:
    _script(workspace)
    _, daemon = _value(workspace, runtime)
    folder = _folder(runtime)
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: not _alive(daemon), 30, "the killed daemon gone")
    assert (folder / "worker.sock").exists() and running(folder) is None  # stale, not trusted
    value, again = _value(workspace, runtime)
    assert value == 1 and again != daemon and running(folder) == again


def test_a_daemon_no_main_can_reach_leaves_at_once(workspace: Workspace, runtime: Path) -> None:
    _script(workspace)
    _, daemon = _value(workspace, runtime)
    (_folder(runtime) / "worker.sock").unlink()  # (its folder cleaned, say: none finds it)
    wait_for(lambda: not _alive(daemon), 30, "the unreachable daemon gone, long before 1m")


def test_two_scripts_started_at_once_share_one_daemon(
        workspace: Workspace, runtime: Path) -> None:
    _script(workspace)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_LOCAL_THREADS": "2", **_env(runtime)}
    procs = [subprocess.Popen([PYTHON, "main.py"], cwd=workspace.root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err[-2000:] for _, err in outs]
    pids = {int(out.split()[1]) for out, _ in outs}
    assert len(pids) == 1 and running(_folder(runtime)) in pids


def test_a_killed_mains_tasks_are_dropped_and_the_daemon_lingers(
        workspace: Workspace, runtime: Path, tmp_path: Path) -> None:
    _script(workspace)
    workspace.write("long.py", LONG)
    marker = tmp_path / "task.pid"
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_LOCAL_THREADS": "2", **_env(runtime)}
    main = subprocess.Popen([PYTHON, "long.py", str(marker)], cwd=workspace.root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(marker.exists, 60, "the task started")
    finally:
        main.send_signal(signal.SIGKILL)
        main.wait(30)
    task = int(marker.read_text())
    wait_for(lambda: not _alive(task), 30, "the killed Main's task stopped")
    folder = _folder(runtime)
    daemon = running(folder)
    assert daemon is not None and _alive(daemon)
    status = query_status(f"ipc://{folder}/worker.sock")
    assert status["busy"] == 0 and status["queued"] == 0
    assert _value(workspace, runtime) == (1, daemon)


def test_without_linger_nothing_is_left_after_the_script(
        workspace: Workspace, runtime: Path) -> None:
    _script(workspace)
    out = workspace.run("main.py", env={"XDG_RUNTIME_DIR": str(runtime)})
    assert out.returncode == 0, out.stderr[-3000:]
    daemon = int(out.stdout.split()[1])
    wait_for(lambda: not _alive(daemon), 30, "the local daemon gone with its script")
    assert not list(runtime.glob("distrib/local-*"))


def test_a_worker_with_linger_leaves_after_that_long_without_a_main(
        start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(extra=("--linger", "1"))
    assert worker.proc.wait(30) == 0
    assert "no Main for 1 s; leaving" in worker.log()

"""Warm pools: executors forked from one template per environment, each import done once."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import psutil

from tests.helpers import Worker, Workspace, ended, wait_for

# Tests that compare the pids tasks see with the daemon's, or use the interpreter started
# ahead, are of the process model without a sandbox (the embedded cluster's): in one, tasks
# see the pids of their own PID namespace, and no interpreter is started ahead
# (test_sandbox.py has that model's own).
UNBOXED = ("--no-sandbox",)

LOADED = """\
import os, sys, time
{extra}
from distrib import distributed

LOADED_AT = time.time_ns()  # the moment this script was imported, in this process

@distributed
def where(i):
    time.sleep(0.3)
    return os.getpid(), os.getppid(), LOADED_AT

if __name__ == "__main__":
    calls = [where(i) for i in range(8)]
    for pid, parent, loaded in [call.unwrap() for call in calls]:
        print(pid, parent, loaded)
"""


def run(workspace: Workspace, worker: Worker, extra: str = "") -> list[tuple[int, ...]]:
    workspace.write("main.py", LOADED.format(extra=extra))
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode == 0, out.stderr[-3000:]
    return [tuple(map(int, line.split())) for line in out.stdout.splitlines()]


def test_executors_are_forked_from_one_import_and_adopted_by_the_daemon(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(threads=4, extra=UNBOXED)
    rows = run(workspace, worker)
    assert len({pid for pid, _, _ in rows}) >= 2  # several executors ran them ...
    assert len({loaded for _, _, loaded in rows}) == 1  # ... all from the one import
    assert {parent for _, parent, _ in rows} == {worker.pid}  # waited for by the daemon
    status = worker.status()
    assert len(status["templates"]) == 1 and status["executors_crashed"] == 0
    assert set(status["executors"]) >= {pid for pid, _, _ in rows}


def test_a_workspace_whose_import_starts_a_thread_gets_spawned_executors(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(threads=4, extra=UNBOXED)
    rows = run(workspace, worker, extra="import threading\nthreading.Thread(target=time.sleep, "
                                         "args=(60,), daemon=True).start()")
    executors = {pid for pid, _, _ in rows}
    assert len(executors) >= 2
    assert len({loaded for _, _, loaded in rows}) == len(executors)  # each imported it
    wait_for(lambda: "spawned one by one" in worker.log(), what="the worker saying why")
    assert "started 1 thread(s)" in worker.log()
    assert worker.status()["templates"] == []


def test_modules_the_main_imported_are_imported_once_by_the_template(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(threads=4)
    workspace.write("heavy.py", "import time\nLOADED_AT = time.time_ns()\n")
    workspace.write("main.py", """\
        import os, time
        from distrib import distributed

        @distributed
        def loaded(i):
            import heavy  # (the main script imports it only when run as a script)
            time.sleep(0.3)
            return os.getpid(), heavy.LOADED_AT

        if __name__ == "__main__":
            import heavy
            calls = [loaded(i) for i in range(8)]
            for pid, at in [call.unwrap() for call in calls]:
                print(pid, at)
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [tuple(map(int, line.split())) for line in out.stdout.splitlines()]
    assert len({pid for pid, _ in rows}) >= 2 and len({at for _, at in rows}) == 1


def test_templates_import_ahead_the_scripts_modules_not_what_distribs_start_imported(
        workspace: Workspace) -> None:
    workspace.write("heavy.py", "X = 1\n")
    workspace.write("main.py", """\
        import distrib
        import heavy

        if __name__ == "__main__":
            distrib.init(local_threads=1)  # (the embedded cluster: its settings, its daemon)
            from distrib.main import _current

            print(*_current._session.hello.preload)
        """)
    out = workspace.run("main.py")
    assert out.returncode == 0, out.stderr[-3000:]
    preload = out.stdout.split()
    assert "heavy" in preload
    # (distrib imported these, for its settings, its session and the local cluster)
    assert not {"zmq", "platformdirs", "msgspec", "packaging"} & set(preload), preload


def test_what_a_task_leaves_running_is_reaped_when_it_ends(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    import psutil

    worker = start_worker(threads=2)
    workspace.write("main.py", """\
        import os, struct, time
        from distrib import distributed

        @distributed
        def daemonize(i):
            read, write = os.pipe()
            if os.fork() == 0:  # a helper that outlives its parent (adopted by the executor)
                helper = os.fork()
                if helper == 0:
                    time.sleep(0.5)
                    os._exit(0)
                os.write(write, struct.pack("<q", helper))
                os._exit(0)
            os.wait()
            return struct.unpack("<q", os.read(read, 8))[0]

        if __name__ == "__main__":
            for call in [daemonize(i) for i in range(4)]:
                print(call.unwrap())
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode == 0, out.stderr[-3000:]
    helpers = [int(line) for line in out.stdout.split()]
    assert len(helpers) == 4

    def gone(pid: int) -> bool:  # (not even a zombie: reaped)
        try:
            return psutil.Process(pid).ppid() != worker.pid
        except psutil.NoSuchProcess:
            return True

    wait_for(lambda: all(gone(pid) for pid in helpers), timeout=30,
             what="the helpers, ended, reaped by the daemon")


def test_a_forked_executor_waits_for_its_own_subprocesses(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", """\
        import subprocess
        from distrib import distributed

        @distributed
        def code(n):
            return subprocess.run(["sh", "-c", f"exit {n}"]).returncode

        if __name__ == "__main__":
            print([call.unwrap() for call in [code(n) for n in (0, 3, 7)]], flush=True)
            input()  # (connected: a sandboxed Main's template leaves with it)
        """)
    with ended(workspace.start("main.py", worker)) as main:
        assert main.stdout is not None
        assert main.stdout.readline().strip() == "[0, 3, 7]", main.communicate()
        assert worker.status()["templates"]  # (they ran in forked executors)
        main.communicate("\n", timeout=120)
    assert main.returncode == 0


def _zygotes(daemon: psutil.Process) -> list[psutil.Process]:
    """Interpreters started ahead, and what they became (templates, and executors forked
    from those, keep its command line)."""
    found = []
    for p in daemon.children():
        try:
            if "zygote" in p.cmdline():
                found.append(p)
        except psutil.Error:  # (one that just ended)
            pass
    return found


def _ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _sockets(pid: int) -> set[str]:
    """The socket inodes process ``pid`` holds."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def test_the_first_template_is_an_interpreter_started_ahead_and_executors_hold_their_own_socket(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(threads=4, extra=("--nice", "3", *UNBOXED))
    daemon = psutil.Process(worker.pid)
    (ahead,) = wait_for(lambda: _zygotes(daemon), what="an interpreter started ahead")
    assert wait_for(lambda: ahead.nice() == 3, what="it to run at the owner's niceness")
    rows = run(workspace, worker)
    assert len({pid for pid, _, _ in rows}) >= 2
    assert worker.status()["templates"] == [ahead.pid]  # it became the template
    # Forked together, yet none keeps another's socket (its death would go unseen).
    executors = worker.status()["executors"]
    held = [_sockets(pid) for pid in executors]
    assert len(executors) >= 2 and all(
        not (a & b) for i, a in enumerate(held) for b in held[i + 1:]), held
    # Once the template is ready, another is started ahead; it leaves with its daemon.
    (spare,) = wait_for(lambda: [p for p in _zygotes(daemon)
                                 if p.pid not in (ahead.pid, *worker.status()["executors"])],
                        what="a new interpreter started ahead")
    os.kill(worker.pid, signal.SIGKILL)
    worker.proc.wait(30)
    wait_for(lambda: _ended(spare.pid), what="the interpreter started ahead to leave with its "
             "daemon")
    for pid in [ahead.pid, *executors]:
        wait_for(lambda: _ended(pid), what=f"process {pid} of the killed daemon to end")




def test_without_a_sandbox_the_interpreter_ahead_is_started_before_the_worker_is_ready(
        start_worker: Callable[..., Worker]) -> None:
    # It imports beside the daemon, not after it: when the ready line is out, it runs.
    worker = start_worker(threads=2, extra=UNBOXED)
    (ahead,) = _zygotes(psutil.Process(worker.pid))
    assert ahead.ppid() == worker.pid
    # A worker that serves other Mains (its tasks in a sandbox: its templates start their
    # own interpreter) starts none before it is ready.
    boxed = start_worker(threads=2)
    said = wait_for(lambda: next((line for line in boxed.log().splitlines()
                                  if "sandbox" in line), None), what="the sandbox it uses")
    if "tasks run in a sandbox" in said:
        assert _zygotes(psutil.Process(boxed.pid)) == []


AHEAD = """\
import logging, os, sys, time
from pathlib import Path
import distrib
from distrib import distributed
{extra}
LOADED_AT = time.time_ns()  # when this script was imported, in this process

@distributed
def where(i):
    time.sleep(0.3)
    return os.getpid(), LOADED_AT

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    distrib.init()
    print("init returned", flush=True)
    go = Path("go")
    deadline = time.monotonic() + 60
    while sys.argv[1:] == ["wait"] and not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    first_call = time.time_ns()
    calls = [where(i) for i in range({calls})]
    try:
        for pid, loaded in [call.unwrap() for call in calls]:
            print(pid, loaded, first_call)
    except Exception as exc:
        print(type(exc).__name__, exc)
"""


def test_init_returns_with_an_executor_per_local_slot_that_imported_the_script(
        workspace: Workspace) -> None:
    workspace.write("main.py", AHEAD.format(extra="", calls=6))
    out = workspace.run("main.py", env={"DISTRIB_LOCAL_THREADS": "3"})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [tuple(map(int, line.split())) for line in out.stdout.splitlines()[1:]]
    assert len(rows) == 6
    assert len({pid for pid, _, _ in rows}) == 3  # one executor per slot ...
    assert len({loaded for _, loaded, _ in rows}) == 1  # ... forked from one import ...
    assert all(loaded < first for _, loaded, first in rows)  # ... done before the first call


def test_a_worker_starts_an_executor_for_a_main_as_it_connects(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(threads=4, extra=UNBOXED)
    workspace.write("main.py", AHEAD.format(extra="", calls=1))
    with ended(workspace.start("main.py", worker, "wait")) as main:
        assert main.stdout is not None and main.stdout.readline() == "init returned\n"
        # Before any call: the workspace is there, its template imported it, and one
        # executor was forked from it.
        status = wait_for(lambda: (s := worker.status())["executors"] and s, timeout=60,
                          what="an executor started ahead of the first call")
        assert len(status["templates"]) == 1 and len(status["executors"]) == 1
        (workspace.root / "go").touch()
        out, err = main.communicate(timeout=120)
    assert main.returncode == 0, err[-3000:]
    ((pid, loaded, first),) = [tuple(map(int, line.split())) for line in out.splitlines()]
    assert pid == status["executors"][0] and loaded < first


def test_a_script_that_cannot_be_imported_on_workers_does_not_hold_init(
        workspace: Workspace) -> None:
    workspace.write("main.py", AHEAD.format(
        extra='if __name__ != "__main__":\n    raise RuntimeError("not on workers")', calls=1))
    out = workspace.run("main.py")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "started no executor ahead: its executors stopped before they were ready" \
        in out.stderr
    assert out.stdout.splitlines()[1] == "RuntimeError not on workers"


EDITED = """\
from distrib import distributed

EDIT = {edit}  # (each run edits the script: a new distribution, a new template)

@distributed
def plus(x):
    return x + EDIT

if __name__ == "__main__":
    print([r.unwrap() for r in [plus(i) for i in range(4)]])
"""


def test_the_templates_of_a_script_edited_between_runs_are_not_all_kept(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    # Each holds what its script imported; a script edited and run again and again (a
    # lingering local daemon's day) started one template per edit, each kept 300 s.
    from distrib.worker._pool import MAX_IDLE_TEMPLATES

    worker = start_worker(threads=2, extra=UNBOXED)
    runs = MAX_IDLE_TEMPLATES + 3
    started: set[int] = set()
    for edit in range(runs):
        workspace.write("main.py", EDITED.format(edit=edit))
        out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.split("\n")[0] == str([i + edit for i in range(4)])
        started.update(worker.status()["templates"])
    assert len(started) == runs  # (one per edit)
    # The last run's (its executors wait idle for its next run) and the three used before.
    kept = wait_for(lambda: len(t := worker.status()["templates"]) <= 1 + MAX_IDLE_TEMPLATES
                    and t, timeout=60, what="the oldest templates stopped")
    assert set(kept) < started
    gone = started - set(kept)


    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    wait_for(lambda: not any(running(p) for p in gone), timeout=60,
             what=f"the processes of the dropped templates {sorted(gone)} ended")

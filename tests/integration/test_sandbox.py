"""The sandbox each executor runs in, against hostile tasks of an authorized Main on keyed
workers: what a task cannot read, undo, see or reach, with bubblewrap and with the namespaces
distrib builds itself where bubblewrap is not installed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import PYTHON, Worker, Workspace, ended, finish, wait_for
from tests.integration.test_keys import keygen

BUILDERS = ["bubblewrap", "namespaces"] if shutil.which("bwrap") else ["namespaces"]

HOSTILE = """
    from distrib import distributed
    import ctypes
    import json
    import os
    import socket

    import distrib


    @distributed
    def probe(paths):
        \"\"\"What this task can read, list and see of the machine.\"\"\"
        out = {}
        for path in paths:
            try:
                if os.path.isdir(path):
                    out[path] = "listed " + ",".join(sorted(os.listdir(path)))
                else:
                    with open(path, "rb") as f:
                        out[path] = "read " + f.read(200).decode(errors="replace")
            except OSError as exc:
                out[path] = f"refused {type(exc).__name__}"
        procs = {}
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        procs[pid] = f.read().replace(b"\\0", b" ").decode(errors="replace")
                except OSError:
                    pass
        out["procs"] = procs
        return json.dumps(out)


    @distributed
    def signal(pid):
        try:
            os.kill(pid, 0)
            return "reached"
        except OSError as exc:
            return type(exc).__name__


    @distributed
    def unmount_and_write():
        \"\"\"Unmount this task's overlay, then write the tree's own file.\"\"\"
        libc = ctypes.CDLL(None, use_errno=True)
        here = os.getcwd()
        rc = libc.umount2(here.encode(), 2)
        errno = ctypes.get_errno()
        try:
            with open(os.path.join(here, "data.txt"), "w") as f:
                f.write("changed")
            wrote = "wrote"
        except OSError as exc:
            wrote = type(exc).__name__
        return rc, errno, wrote


    @distributed
    def read_data():
        with open("data.txt") as f:
            return f.read()


    @distributed
    def connect(port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                return s.recv(16).decode()
        except OSError as exc:
            return type(exc).__name__
    """

MAIN = """
    import json
    import sys

    import distrib
    import hostile

    if __name__ == "__main__":
        what, arg = sys.argv[1], json.loads(sys.argv[2])
        if what == "probe":
            print("RESULT", hostile.probe(arg).result(timeout=120))  # (JSON already)
        elif what == "signal":
            print("RESULT", json.dumps(hostile.signal(arg).result(timeout=120)))
        elif what == "unmount":
            first = hostile.unmount_and_write().result(timeout=120)
            after = distrib.gather([hostile.read_data() for _ in range(4)], timeout=120)
            print("RESULT", json.dumps([first, after]))
        elif what == "read":
            print("RESULT", json.dumps(distrib.gather([hostile.read_data() for _ in range(4)],
                                                      timeout=120)))
        elif what == "connect":
            print("RESULT", json.dumps(hostile.connect(arg).result(timeout=120)))
    """

VICTIM = """
    from distrib import distributed
    import os
    import sys
    import time

    import distrib


    @distributed
    def busy(seconds):
        with open("in-progress-secret.txt", "w") as f:
            f.write("the victim's task file")
        time.sleep(seconds)
        return "done"


    if __name__ == "__main__":
        print("RESULT", busy(float(sys.argv[1])).result(timeout=180))
    """


def _workspace(root: Path, cache: Path, files: dict[str, str]) -> Workspace:
    root.mkdir()
    ws = Workspace(root, cache)
    for name, text in files.items():
        ws.write(name, text)
    return ws


def _run(ws: Workspace, key: Path, worker, *args: str, env: dict[str, str] | None = None,
         script: str = "main.py") -> Any:
    out = ws.run(script, *args, env={"DISTRIB_KEY": str(key), "DISTRIB_WORKERS":
                                     f"{worker.address} {worker.public_key}", **(env or {})})
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _popen(ws: Workspace, key: Path, worker, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(ws.cache_dir), "DISTRIB_KEY": str(key),
           "DISTRIB_WORKERS": f"{worker.address} {worker.public_key}"}
    return subprocess.Popen([PYTHON, *args], cwd=ws.root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def two_mains(tmp_path: Path, cache_dir: Path):
    """A hostile Main's and a victim Main's workspaces and keys."""
    hostile = _workspace(tmp_path / "hostile", cache_dir,
                         {"hostile.py": HOSTILE,
                          "main.py": MAIN, "data.txt": "original"})
    victim = _workspace(tmp_path / "victim", cache_dir / "v",
                        {"victim.py": VICTIM, "data.txt": "original", "hostile.py":
                         HOSTILE, "main.py": MAIN})
    return (hostile, keygen(tmp_path / "hostile.key"), tmp_path / "hostile.key",
            victim, keygen(tmp_path / "victim.key"), tmp_path / "victim.key")


@pytest.mark.parametrize("builder", BUILDERS)
def test_a_task_cannot_read_keys_other_mains_work_or_see_other_processes(
        start_worker, tmp_path: Path, two_mains, builder: str) -> None:
    hostile, hostile_pub, hostile_key, victim, victim_pub, victim_key = two_mains
    worker, auth = _keyed(start_worker, tmp_path, builder, [hostile_pub, victim_pub])
    kind = "bubblewrap" if builder == "bubblewrap" else "Linux namespaces built by distrib"
    wait_for(lambda: f"tasks run in a sandbox built with {kind}" in worker.log(),
             what="the worker saying which sandbox it uses")
    with ended(_popen(victim, victim_key, worker, "victim.py", "60")) as busy:
        uppers = wait_for(lambda: list(worker.cache_dir.glob("runs/**/in-progress-secret.txt")),
                          what="the victim's task writing its file")
        victim_tree = next(worker.cache_dir.glob("envs/**/victim.py"))
        paths = [str(tmp_path / f"{builder}.key"), str(auth), str(victim_tree),
                 str(victim_tree.parent), str(uppers[0]), str(worker.cache_dir / "control"),
                 str(worker.cache_dir / "runs"), str(worker.log_file), "/root", "/home"]
        seen = _run(hostile, hostile_key, worker, "probe", json.dumps(paths))
        for path in paths[:4] + [paths[4], paths[5], str(worker.log_file)]:
            assert seen[path].startswith("refused FileNotFoundError"), (path, seen[path])
        runs = seen[str(worker.cache_dir / "runs")]  # (only the folders leading to its own)
        assert "in-progress" not in runs and len(runs.split(",")) == 1, runs
        procs = seen["procs"]
        assert not any("distrib worker" in cmd or "victim.py" in cmd
                       for cmd in procs.values()), procs
        assert _run(hostile, hostile_key, worker, "signal", str(worker.pid)) in (
            "ProcessLookupError", "PermissionError")
        busy.kill()
        busy.communicate()


def _keyed(start_worker, tmp_path: Path, builder: str, authorized: list[str],
           extra: tuple[str, ...] = ()):
    """A keyed worker whose sandboxes are built by ``builder`` only."""
    keygen(tmp_path / f"{builder}.key")
    auth = tmp_path / f"{builder}.authorized"
    auth.write_text("".join(f"{k} a Main\n" for k in authorized))
    worker = start_worker(threads=2, name=f"only-{builder}",
                          extra=("--key", str(tmp_path / f"{builder}.key"),
                                 "--authorized-keys", str(auth), *extra),
                          env={"DISTRIB_SANDBOX_BUILDERS": builder})
    return worker, auth


@pytest.mark.parametrize("builder", BUILDERS)
def test_a_task_cannot_unmount_its_overlay_to_change_the_tree(
        start_worker, tmp_path: Path, two_mains, builder: str) -> None:
    hostile, hostile_pub, hostile_key, victim, victim_pub, victim_key = two_mains
    worker, _ = _keyed(start_worker, tmp_path, builder, [hostile_pub, victim_pub])
    (rc, errno, wrote), after = _run(hostile, hostile_key, worker, "unmount", "0")
    assert rc == -1 and errno in (1, 22), (rc, errno)  # EPERM or EINVAL: locked
    assert wrote == "wrote"  # (into its own layer)
    assert after == ["original"] * 4  # the next tasks see the tree as shipped
    # The same tree shipped by another Main: unchanged too.
    assert _run(victim, victim_key, worker, "read", "0") == ["original"] * 4


class _Service:
    """A TCP service on this machine's loopback that says hello to whoever connects."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"hello")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("network, answer", [("none", "OSError"), ("loopback", "hello")])
def test_a_task_reaches_loopback_services_only_if_the_owner_allows(
        start_worker, tmp_path: Path, two_mains, network: str, answer: str) -> None:
    hostile, hostile_pub, hostile_key, *_ = two_mains
    service = _Service()
    try:
        worker, _ = _keyed(start_worker, tmp_path, BUILDERS[0], [hostile_pub],
                           ("--task-network", network) if network != "none" else ())
        got = _run(hostile, hostile_key, worker, "connect", str(service.port))
        assert got == answer or (answer == "OSError" and got in (
            "ConnectionRefusedError", "OSError", "TimeoutError")), got
    finally:
        service.close()


def test_a_keyed_worker_on_the_network_refuses_to_start_without_a_sandbox(
        tmp_path: Path) -> None:
    keygen(tmp_path / "w.key")
    main = keygen(tmp_path / "m.key")
    (tmp_path / "auth").write_text(f"{main} a Main\n")
    command = [PYTHON, "-m", "distrib", "worker", "--listen", "0.0.0.0:0", "--key",
               str(tmp_path / "w.key"), "--authorized-keys", str(tmp_path / "auth"),
               "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "DISTRIB_SANDBOX_BUILDERS": "none"}
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "no sandbox can be built here" in out.stderr and "--no-sandbox" in out.stderr
    with ended(subprocess.Popen([*command, "--no-sandbox"], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert " ready on " in proc.stdout.readline()
        said = ""
        while "NO SANDBOX (--no-sandbox)" not in said:  # (said once it listens)
            line = proc.stderr.readline()
            assert line, said  # (it ended without saying so)
            said += line
        proc.terminate()
        proc.communicate(timeout=60)


LOADED = """\
import os, sys, time
from distrib import distributed

LOADED_AT = time.time_ns()  # the moment this script was imported, in this process

@distributed
def where(i):
    time.sleep(0.3)
    return os.getpid(), LOADED_AT

if __name__ == "__main__":
    for pid, loaded in distrib.gather([where(i) for i in range(8)], timeout=120):
        print(pid, loaded)
    print("END", flush=True)
    sys.stdin.readline()  # (connected, its sandbox kept, until the test closes its stdin)
"""


@contextmanager
def connected(workspace: Workspace, worker: Worker) -> Iterator[list[tuple[int, ...]]]:
    """Run LOADED on ``worker`` and yield what it printed while it stays connected (a
    sandbox is one Main's: its template and executors stop as it leaves)."""
    with ended(workspace.start("main.py", worker)) as main:
        assert main.stdout is not None
        lines = []
        for line in main.stdout:
            if line == "END\n":
                break
            lines.append(line)
        else:
            raise AssertionError(f"the Main ended early: {lines} {main.communicate()[1]}")
        yield [tuple(map(int, line.split())) for line in lines]
        finish(main)


def _pid_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def _inner_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith("NSpid:"))
    return int(line.split()[-1])


def test_sandboxed_executors_are_forked_from_one_import_and_known_to_the_daemon(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=4)
    workspace.write("main.py", "import distrib\n" + LOADED)
    with connected(workspace, worker) as rows:
        assert len({pid for pid, _ in rows}) >= 2  # several executors ran them ...
        assert len({loaded for _, loaded in rows}) == 1  # ... all from the one import
        status = worker.status()
        assert len(status["templates"]) == 1 and status["executors_crashed"] == 0
        # The daemon holds their pids as it sees them: processes of another PID namespace,
        # which are there the pids the tasks saw.
        (template,) = status["templates"]
        assert _pid_namespace(template) != _pid_namespace(worker.pid)
        assert {_inner_pid(pid) for pid in status["executors"]} >= {pid for pid, _ in rows}
        assert all(_pid_namespace(pid) == _pid_namespace(template)
                   for pid in status["executors"])
        # One killed by its pid is seen dead and replaced: the next run works.
        killed = status["executors"][0]
        os.kill(killed, 9)
        wait_for(lambda: killed not in worker.status()["executors"], what="the death seen")
    with connected(workspace, worker) as again:
        assert len(again) == 8



LEAVING = """\
import sys
import distrib
from distrib import distributed

@distributed
def twice(x):
    return 2 * x

if __name__ == "__main__":
    print(distrib.gather([twice(i) for i in range(4)], timeout=120), flush=True)
    sys.stdin.readline()  # (connected until the test has seen its template)
"""


def test_a_sandboxed_template_stops_as_soon_as_its_main_leaves(
        workspace: Workspace, start_worker) -> None:
    # A sandbox is one Main's: no later Main forks from its template, which holds all that
    # Main's script imported. (Without a sandbox, one waits idle_after for the next run.)
    worker = start_worker(threads=2)
    workspace.write("main.py", LEAVING)
    with ended(workspace.start("main.py", worker)) as main:
        assert main.stdout is not None
        assert main.stdout.readline().strip() == "[0, 2, 4, 6]"
        (template,) = wait_for(lambda: worker.status()["templates"], what="the Main's template")
        finish(main)  # (its stdin closed: it leaves)
    wait_for(lambda: worker.status()["templates"] == [], timeout=60,
             what="the template of the Main that left stopped")
    wait_for(lambda: not psutil.pid_exists(template)
             or psutil.Process(template).status() == psutil.STATUS_ZOMBIE,
             what=f"its process {template} ended")
    assert worker.proc.poll() is None

def _in_namespace_of(pid: int) -> list[int]:
    """The processes in ``pid``'s PID namespace (as this test sees them)."""
    target, out = _pid_namespace(pid), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if _pid_namespace(int(name)) == target:
                    out.append(int(name))
            except OSError:
                pass
    return out


@pytest.mark.parametrize("builder", BUILDERS)
def test_what_a_sandboxed_executor_that_died_left_is_killed_by_the_daemon(
        workspace: Workspace, start_worker, builder: str) -> None:
    from tests.integration.test_process_tree import TASKS

    worker = start_worker(threads=1, env={"DISTRIB_SANDBOX_BUILDERS": builder})
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import sys
        import distrib, tasks

        if __name__ == "__main__":
            try:
                tasks.leave_processes(20, -1).unwrap(timeout=120)
            except distrib.WorkerCrashed as exc:
                print("WorkerCrashed", exc)
            print("END", flush=True)
            sys.stdin.readline()  # (connected: its sandbox stays until the test is done)
        """)
    with ended(workspace.start("main.py", worker)) as main:
        assert main.stdout is not None
        printed = ""
        while not printed.endswith(("END\n", "\n\n")):  # (up to END, or its exit)
            printed += main.stdout.readline() or "\n\n"
        assert "WorkerCrashed" in printed and "END" in printed, (printed, main.poll())
        # Its 20 processes and a setsid loop went to the template (process 1 there), not to
        # the daemon: the daemon kills them all the same, while its Main stays. (Its sweep
        # does, and logs "killed N process(es) left running by tasks"; or, when it read the
        # executor's end while the kernel had closed its files but not yet handed its children
        # to the template, they were still the executor's, and went with it.)
        (template,) = worker.status()["templates"]
        wait_for(lambda: len(_in_namespace_of(template)) <= 2, 20,
                 "only the template (and an executor) left in the sandbox")
        finish(main)

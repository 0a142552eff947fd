"""The core runtime end to end: user scripts in temp workspaces, real worker daemons."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import PYTHON, REPO, Worker, Workspace, ended, finish, wait_for, with_tasks

def test_seed_example_runs_on_the_embedded_cluster(workspace: Workspace) -> None:
    shutil.copy(REPO / "examples" / "sleep_sum.py", workspace.root)
    out = workspace.run("sleep_sum.py", env={"DEMO_COUNT": "30", "DEMO_SLEEP": "0.05"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([x + x + 1 for x in range(30)])
    assert "SANDBOX" not in out.stderr  # (its only Main is its owner: nothing to warn of)


def test_seed_example_runs_on_two_daemons_started_by_hand(workspace: Workspace,
                                                          start_worker) -> None:
    # The example reads DEMO_SLEEP when a worker imports it: the Main's value is forwarded,
    # and wins over the worker's own (which would fail the import if it were used).
    knobs = {"DEMO_SLEEP": "not-a-number"}
    a = start_worker(threads=2, name="alpha", env=knobs)
    b = start_worker(threads=2, name="beta", env=knobs)
    shutil.copy(REPO / "examples" / "sleep_sum.py", workspace.root)
    out = workspace.run("sleep_sum.py", env={
        "DEMO_COUNT": "40", "DEMO_SLEEP": "0.05", "DISTRIB_WORKERS": f"{a.address},{b.address}"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([x + x + 1 for x in range(40)])
    done = [w.status()["tasks_done"] for w in (a, b)]
    assert sum(done) == 40 and all(n > 0 for n in done), done
    for w in (a, b):  # (status measures disk use in the background, again as it changes)
        disk = wait_for(lambda w=w: (s := w.status()).get("workspaces_cached") == 1 and s,
                        what=f"worker {w.address} counting the workspace it keeps")
        assert disk["workspaces_bytes"] > 0


def test_workspace_modules_data_files_and_main_functions(workspace: Workspace,
                                                         start_worker) -> None:
    worker = start_worker()
    workspace.write("models.py", """
        from dataclasses import dataclass

        @dataclass
        class Point:
            x: int
            y: int

        class BadInput(Exception):
            pass
        """)
    workspace.write("data/input.txt", "41\n")
    workspace.write("main.py", """
        import json, os
        import models
        from distrib import distributed

        def helper(p):  # defined in the main script, used by the task
            return models.Point(p.x * 2, p.y * 2)

        @distributed
        def describe(p):
            if p.x < 0:
                raise models.BadInput(f"negative x: {p.x}")
            with open("data/input.txt") as f:  # a relative read, as on the Main
                value = int(f.read())
            return helper(p), value, os.getcwd(), models.__file__, __file__

        if __name__ == "__main__":
            point, value, cwd, models_file, main_file = describe(models.Point(1, 2)).unwrap()
            assert isinstance(point, models.Point), type(point)
            try:
                describe(models.Point(-1, 0)).unwrap()
            except models.BadInput as exc:
                bad = str(exc)
            print(json.dumps({"point": [point.x, point.y], "value": value, "cwd": cwd,
                              "models": models_file, "main": main_file, "bad": bad}))
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["point"] == [2, 4] and got["value"] == 41
    assert got["bad"] == "negative x: -1"
    root = str(workspace.root.resolve())
    cache = str(worker.cache_dir.resolve())
    for key in ("cwd", "models", "main"):
        assert got[key].startswith(cache), (key, got[key])
        assert not got[key].startswith(root), (key, got[key])


def test_calls_at_import_time_without_the_main_guard_get_a_clear_error(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker()
    workspace.write("script.py", """
        from distrib import distributed

        @distributed
        def double(x):
            return 2 * x

        print(double(21).unwrap())
        """)
    out = workspace.run("script.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode != 0
    assert "MainGuardError" in out.stderr
    assert 'if __name__ == "__main__":' in out.stderr
    status = worker.status()
    assert status["executors_started"] <= 2, status  # no cascade of processes
    assert status["tasks_done"] == 0


def test_init_at_import_time_without_the_main_guard_fails_at_once_on_the_local_cluster(
        workspace: Workspace) -> None:
    # The templates import the script: its init() there set up a local cluster of its own,
    # whose templates imported the script again, and the run waited a minute or more.
    workspace.write("script.py", """
        import distrib
        from distrib import distributed

        @distributed
        def double(x):
            return 2 * x

        distrib.init(local_threads=2)
        print(double(21).unwrap())
        """)
    out = workspace.run("script.py", timeout=45)
    assert out.returncode != 0
    assert "MainGuardError: distrib.init() was called while a worker imported the main " \
           "script script.py" in out.stderr, out.stderr
    assert 'if __name__ == "__main__":' in out.stderr
    assert "not ready after" not in out.stderr


def test_remote_exceptions_come_back_as_themselves(workspace: Workspace) -> None:
    with_tasks(workspace).write("main.py", """
        import traceback
        import tasks

        if __name__ == "__main__":
            r = tasks.raiser("bad value")
            try:
                r.unwrap()
            except ValueError as exc:
                print("TRACE", "".join(traceback.format_exception(exc)).replace("\\n", "|"))
            print("AGREE", r.ok(), type(r.error()).__name__, str(r.error()))
            u = tasks.unpicklable_error()
            try:
                u.unwrap()
            except tasks.Unpicklable as exc:  # its lock is left out, named in a note
                print("KEPT", str(exc), hasattr(exc, "lock"), "|".join(exc.__notes__))
            print("AGREE2", u.ok(), type(u.error()).__name__)
            good = tasks.ok(1)
            print("OK", good.wait(60) and good.ok(), good.error())
        """)
    out = workspace.run("main.py")
    assert out.returncode == 0, out.stderr
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.stdout.splitlines()}
    assert "raise ValueError(message)  # the remote line tests look for" in lines["TRACE"]
    assert "tasks.py" in lines["TRACE"]
    assert lines["AGREE"] == "False ValueError bad value"
    assert lines["KEPT"].startswith("cannot travel False ")
    assert "lock (a _thread.lock does not pickle)" in lines["KEPT"]
    assert lines["AGREE2"] == "False Unpicklable"
    assert lines["OK"] == "True None"


def test_killed_executor_is_retried_or_reported_and_the_daemon_serves_on(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    # (its tasks write their pids to files of the test's: no sandbox, which would hide them;
    # test_sandbox.py kills a sandboxed executor by the pid the daemon knows)
    worker = start_worker(threads=1, extra=("--no-sandbox",))
    with_tasks(workspace).write("main.py", """
        import sys
        import tasks
        from distrib import WorkerCrashed

        if __name__ == "__main__":
            print("RETRIED", tasks.hang_once(sys.argv[1]).unwrap(), flush=True)
            try:
                tasks.hang_once_no_retry(sys.argv[2]).unwrap()
            except WorkerCrashed as exc:
                print("CRASHED", exc, flush=True)
            print("AFTER", tasks.ok(41).unwrap(), flush=True)
        """)
    first, second = tmp_path / "first.pid", tmp_path / "second.pid"
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": worker.address}
    proc = subprocess.Popen([PYTHON, "main.py", str(first), str(second)], cwd=workspace.root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with ended(proc):
        for marker in (first, second):
            pid = int(wait_for(lambda: marker.exists() and marker.read_text(), what=str(marker)))
            os.kill(pid, signal.SIGKILL)
        stdout, _ = finish(proc)
    lines = dict(line.split(" ", 1) for line in stdout.splitlines())
    assert lines["RETRIED"] == f"retried after {first.read_text()}"
    assert "died" in lines["CRASHED"] and "retries=0" in lines["CRASHED"]
    assert lines["AFTER"] == "42"
    assert worker.proc.poll() is None
    assert worker.status()["executors_crashed"] == 2


def test_crash_and_segfault_give_worker_crashed(workspace: Workspace) -> None:
    with_tasks(workspace).write("main.py", """
        import tasks
        from distrib import WorkerCrashed

        if __name__ == "__main__":
            for fn in (tasks.crash, tasks.segfault):
                try:
                    fn().unwrap()
                except WorkerCrashed as exc:
                    print(fn.__name__, "crashed")
            print("then", tasks.ok(1).unwrap())
        """)
    out = workspace.run("main.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["crash crashed", "segfault crashed", "then 2"]


def test_changing_one_file_of_a_thousand_moves_one_blob(workspace: Workspace,
                                                        start_worker) -> None:
    worker = start_worker()
    for i in range(1000):
        workspace.write(f"files/f{i:04}.txt", f"file {i}\n")
    workspace.write("main.py", """
        from distrib import distributed

        @distributed
        def read(name):
            with open(name) as f:
                return f.read()

        if __name__ == "__main__":
            print(read("files/f0007.txt").unwrap(), end="")
        """)
    env = {"DISTRIB_WORKERS": worker.address}
    out = workspace.run("main.py", env=env)
    assert out.returncode == 0 and out.stdout == "file 7\n", out.stderr
    assert worker.status()["blobs_received"] == 1001
    workspace.write("files/f0007.txt", "changed\n")
    out = workspace.run("main.py", env=env)
    assert out.returncode == 0 and out.stdout == "changed\n", out.stderr
    assert worker.status()["blobs_received"] == 1002


def test_ten_thousand_tiny_calls_all_complete(workspace: Workspace) -> None:
    with_tasks(workspace).write("main.py", """
        import tasks

        if __name__ == "__main__":
            responses = [tasks.ok(i) for i in range(10_000)]
            results = [r.unwrap() for r in responses]
            assert results == [i + 1 for i in range(10_000)]
            print("OK", len(results))
        """)
    out = workspace.run("main.py", timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK 10000"


def test_cancel_of_a_queued_task_means_it_never_runs(workspace: Workspace, start_worker,
                                                      tmp_path: Path) -> None:
    # (its tasks meet the test through files of its own: no sandbox, which would hide them)
    worker = start_worker(threads=1, extra=("--no-sandbox",))
    with_tasks(workspace).write("main.py", """
        import sys, pathlib, time
        import tasks
        from distrib import Cancelled

        if __name__ == "__main__":
            started, release, never = sys.argv[1:4]
            blocker = tasks.block_until(started, release)
            queued = tasks.touch(never)
            while not pathlib.Path(started).exists():
                time.sleep(0.01)
            print("CANCEL", queued.cancel())
            try:
                queued.unwrap()
            except Cancelled as exc:
                print("CANCELLED", type(exc).__name__, flush=True)
            print("BLOCKER", blocker.unwrap())
            print("AFTER", tasks.ok(1).unwrap())
            print("RAN", pathlib.Path(never).exists())
        """)
    names = [str(tmp_path / n) for n in ("started", "release", "never")]
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": worker.address}
    with ended(subprocess.Popen([PYTHON, "main.py", *names], cwd=workspace.root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)) as main:
        assert main.stdout is not None
        lines = [main.stdout.readline().strip() for _ in range(2)]
        assert lines == ["CANCEL True", "CANCELLED Cancelled"], lines + [main.stderr.read()]
        # The blocker ends only once the worker has the cancel (the Main's cancel returns at
        # once; a task it reaches too late would be stopped, not skipped).
        wait_for(lambda: worker.status()["withdrawing"] == 1, timeout=60,
                 what="the worker asking its executor to skip the task")
        Path(names[1]).write_text("go")
        out, err = main.communicate(timeout=120)
    assert main.returncode == 0, err
    assert out.split("\n")[:3] == ["BLOCKER released", "AFTER 2", "RAN False"], out + err
    assert not Path(names[2]).exists()
    # The cancelled task waited in the busy executor's pipe: it was skipped there, and the
    # executor (running the blocker) was not stopped for it.
    assert worker.status()["executors_started"] == 1


def test_output_is_forwarded_with_the_worker_name_and_can_be_turned_off(
        workspace: Workspace) -> None:
    with_tasks(workspace).write("main.py", """
        import tasks

        if __name__ == "__main__":
            print("result", tasks.talk(7).unwrap())
        """)
    out = workspace.run("main.py")
    assert out.returncode == 0, out.stderr
    assert "[local] line 7 to stdout" in out.stdout.splitlines()
    assert "[local] line 7 to stderr" in out.stderr.splitlines()
    quiet = workspace.run("main.py", env={"DISTRIB_OUTPUT": "0"})
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.splitlines() == ["result 7"]
    assert "line 7" not in quiet.stderr


def test_timeout_stops_the_task_on_the_worker(workspace: Workspace) -> None:
    with_tasks(workspace).write("main.py", """
        import time
        import tasks
        from distrib import TaskTimeout, distributed

        @distributed(timeout=0.5)
        def slow(seconds):
            time.sleep(seconds)

        if __name__ == "__main__":
            try:
                slow(60).unwrap(timeout=90)
            except TaskTimeout as exc:
                print("TIMEOUT", "timeout of 0.5 s" in str(exc))
            print("AFTER", tasks.ok(1).unwrap())
        """)
    out = workspace.run("main.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["TIMEOUT True", "AFTER 2"]


def test_unpicklable_result_is_a_clear_error(workspace: Workspace) -> None:
    with_tasks(workspace).write("main.py", """
        import tasks
        from distrib import SerializationError

        if __name__ == "__main__":
            try:
                tasks.unpicklable_result().unwrap()
            except SerializationError as exc:
                print("SER", "cannot pickle" in str(exc))
        """)
    out = workspace.run("main.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SER True"


def test_api_helpers_and_asyncio(workspace: Workspace) -> None:
    with_tasks(workspace).write("main.py", """
        import asyncio
        import distrib
        import tasks

        async def run_async():
            return await tasks.ok(9)

        if __name__ == "__main__":
            distrib.init(local_threads=2)
            print("GATHER", distrib.gather(tasks.ok.map(range(5))))
            done = sorted(r.unwrap() for r in distrib.as_completed(tasks.ok.map([10, 20])))
            print("ASCOMPLETED", done)
            print("ASYNC", asyncio.run(run_async()))
            print("LOCAL", tasks.ok.local(1))
            r = tasks.ok(3)
            r.wait(60)
            print("WORKER", r.worker)
            try:
                tasks.sleeper(30).unwrap(timeout=0.1)
            except distrib.WaitTimeout as exc:
                print("WAIT", isinstance(exc, TimeoutError))
            distrib.shutdown()
            distrib.shutdown()
            print("DONE")
        """)
    out = workspace.run("main.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:7] == [
        "GATHER [1, 2, 3, 4, 5]", "ASCOMPLETED [11, 21]", "ASYNC 10", "LOCAL 2",
        "WORKER local", "WAIT True", "DONE"]


def test_a_local_worker_that_dies_is_replaced_and_its_tasks_retried(
        workspace: Workspace) -> None:
    with_tasks(workspace).write("main.py", """
        import os, signal
        import psutil
        import distrib
        import tasks

        if __name__ == "__main__":
            distrib.init(local_threads=2)
            responses = [tasks.sleeper(0.2) for _ in range(20)]
            responses[0].unwrap()
            (daemon,) = [p for p in psutil.Process().children() if "worker" in p.cmdline()]
            os.kill(daemon.pid, signal.SIGKILL)
            print("RESULTS", distrib.gather(responses, timeout=120) == [0.2] * 20)
            (new,) = [p for p in psutil.Process().children() if "worker" in p.cmdline()]
            print("REPLACED", new.pid != daemon.pid)
        """)
    out = workspace.run("main.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["RESULTS True", "REPLACED True"]
    assert "the local worker exited (code -9); starting a new one" in out.stderr


def test_a_workspace_that_cannot_be_scanned_leaves_no_local_daemon(
        workspace: Workspace) -> None:
    # The embedded cluster's daemon starts before the scan (to overlap it): a scan that fails
    # must stop it.
    with open(workspace.root / "huge.bin", "wb") as f:
        f.truncate((256 << 20) + 1)  # (sparse: over the file limit, using no disk)
    workspace.write("main.py", """
        import distrib, psutil

        if __name__ == "__main__":
            try:
                distrib.init()
            except distrib.DistribError as exc:
                print("ERROR", type(exc).__name__, exc)
            print("CHILDREN", len(psutil.Process().children(recursive=True)))
        """)
    out = workspace.run("main.py")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("ERROR WorkspaceError workspace file huge.bin is 268435457 bytes")
    assert lines[1] == "CHILDREN 0"


def test_output_redirected_into_the_workspace_is_not_shipped(workspace: Workspace) -> None:
    with_tasks(workspace).write("main.py", """
        import distrib
        import tasks

        if __name__ == "__main__":
            distrib.init()  # the workspace is scanned here...
            print("started", flush=True)  # ...and the log changes before any blob is sent
            for i in range(200):
                print("line", i, tasks.ok(i).unwrap(), flush=True)
        """)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_LOCAL_THREADS": "2"}
    with open(workspace.root / "run.log", "w") as log:
        code = subprocess.run([PYTHON, "main.py"], cwd=workspace.root, env=env, stdout=log,
                              stderr=subprocess.STDOUT, timeout=120).returncode
    text = (workspace.root / "run.log").read_text()
    assert code == 0, text
    assert "line 199 200" in text


@pytest.mark.long
def test_python_c_in_a_huge_folder_ships_no_workspace(tmp_path: Path, start_worker,
                                                      cache_dir: Path) -> None:
    worker = start_worker(threads=2)
    # Creating 200,000 files takes 40 s on some disks and about 1 s in memory.
    shm = Path("/dev/shm")
    home = Path(tempfile.mkdtemp(dir=shm if os.access(shm, os.W_OK) else tmp_path))
    names = [f"f{j}" for j in range(1000)]
    try:
        for i in range(200):
            # (relative to an open folder: a fifth of the CPU of building each full path)
            os.mkdir(home / f"d{i}")
            folder = os.open(home / f"d{i}", os.O_RDONLY | os.O_DIRECTORY)
            try:
                for name in names:
                    os.close(os.open(name, os.O_CREAT | os.O_WRONLY, dir_fd=folder))
            finally:
                os.close(folder)
        (home / "helper.py").write_text("def double(x):\n    return 2 * x\n")
        run_python_c_in(home, worker, cache_dir)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run_python_c_in(home: Path, worker: Worker, cache_dir: Path) -> None:
    code = ("import distrib, helper\n"
            "f = distrib.distributed(helper.double)\n"
            "g = distrib.distributed(lambda x: x + 1)\n"
            "print('RESULTS', f(21).unwrap(timeout=60), g(1).unwrap(timeout=60))\n")
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(cache_dir), "DISTRIB_WORKERS": worker.address}
    out = subprocess.run([PYTHON, "-c", code], cwd=home, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["RESULTS 42 2"]
    assert "no main script (a REPL, python -c or stdin): no workspace is shipped" in out.stderr
    assert worker.status()["blobs_received"] == 0

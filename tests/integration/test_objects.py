"""Shared objects (``distrib.share`` and large arguments): sent once per worker, mapped by
executors without copies, kept apart per Main, bounded per Main. Real daemons throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, TypeVar

from distrib.wire import _codec
from distrib.wire import _messages as m
from tests.helpers import PYTHON, Workspace, ended, finish, raw_main, wait_for

T = TypeVar("T", bound=m.Message)

TASKS = """
    import numpy as np
    from distrib import distributed

    @distributed
    def first_plus(a, i):
        a[0] += i  # a private change: no other call may see it
        return float(a[0]), float(a[-1]), a.flags.writeable

    @distributed
    def length(data):
        return len(data)

    @distributed
    def nap_then_sum(a, seconds):
        import time
        time.sleep(seconds)
        return float(a.sum())
    """


def _env(workspace: Workspace, *workers: str) -> dict[str, str]:  # noqa: ARG001
    return {"DISTRIB_WORKERS": ",".join(workers)}


def _object_folders(worker: Any) -> list[Path]:
    """The folders of Mains' objects on ``worker``: on its disk, or in /dev/shm for Mains
    that share it."""
    return [*worker.cache_dir.glob("runs/*/objects/*"),
            *Path("/dev/shm").glob(f"distrib-w{worker.pid}-*")]


def _next(sock: Any, kind: type[T], timeout: float = 60.0) -> T:
    """The next message of type ``kind`` a raw Main receives (others are skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sock.poll(100):
            message = _codec.decode(sock.recv_multipart())
            if isinstance(message, kind):
                return message
    raise AssertionError(f"no {kind.__name__} within {timeout} s")


def test_a_shared_array_crosses_once_per_worker_and_each_task_may_change_its_own_view(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import numpy as np
        import distrib, tasks

        if __name__ == "__main__":
            big = np.arange(2_500_000, dtype=np.float64)  # 20 MB
            shared = distrib.share(big)
            out = distrib.gather([tasks.first_plus(shared, i) for i in range(30)], timeout=120)
            print("SHARED", out == [(float(i), big[-1], True) for i in range(30)])
            # The same bytes passed plainly use the worker's copy.
            out = distrib.gather([tasks.first_plus(big, 1000) for _ in range(5)], timeout=120)
            print("PLAIN", out == [(1000.0, big[-1], True)] * 5)
            # Changed in place between calls: the next call sees the change.
            big[-1] = -1.0
            print("CHANGED", tasks.first_plus(big, 0).unwrap(timeout=120)[1])
            # Other bytes passed to many calls: inline the first time, then from one copy.
            other = np.ones(500_000)
            out = distrib.gather([tasks.first_plus(other, 1) for _ in range(6)], timeout=120)
            print("OTHER", out == [(2.0, 1.0, True)] * 6)
            try:
                import pickle
                pickle.dumps(shared)
            except distrib.SerializationError as exc:
                print("PICKLE", exc)
        """)
    out = workspace.run("main.py", env=_env(workspace, worker.address))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[:4] == ["SHARED True", "PLAIN True", "CHANGED -1.0", "OTHER True"], \
        out.stderr[-3000:]
    assert lines[4].startswith("PICKLE <distrib.Shared ") and "only be passed" in lines[4]
    status = worker.status()
    # The shared array, then the other one (the changed bytes were passed once: inline);
    # linked from the Main's /dev/shm files where the worker shares it, else sent.
    assert status["objects_fetched"] + status["objects_linked"] == 2
    assert status["objects_reused"] >= 29 + 5 + 4


def test_an_object_past_the_workers_limit_is_a_serialization_error_naming_it(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=1, extra=("--max-objects", "4M"))
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import distrib, tasks

        if __name__ == "__main__":
            try:
                tasks.length(distrib.share(b"x" * 5_000_000)).unwrap(timeout=120)
            except distrib.SerializationError as exc:
                print("ERROR", exc)
            print("SMALL", tasks.length(distrib.share(b"y" * 3_000_000)).unwrap(timeout=120))
        """)
    out = workspace.run("main.py", env=_env(workspace, worker.address))
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stderr[-3000:]
    assert lines[0].startswith("ERROR worker w0: the call passes 5,000,0"), lines
    assert "--max-objects" in lines[0]
    assert lines[1] == "SMALL 3000000"


def test_objects_beyond_the_limit_wait_their_turn_and_old_ones_are_removed(
        workspace: Workspace, start_worker) -> None:
    # 25 MB for this Main: two 10 MB arrays fit, a third waits for one to be free.
    worker = start_worker(threads=1, extra=("--max-objects", "25M"))
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import numpy as np
        import distrib, tasks

        if __name__ == "__main__":
            arrays = [np.full(1_250_000, float(i)) for i in range(6)]  # 10 MB each
            calls = [tasks.nap_then_sum(distrib.share(a), 0.3) for a in arrays]
            print("SUMS", distrib.gather(calls, timeout=180) == [float(a.sum()) for a in arrays])
        """)
    out = workspace.run("main.py", env=_env(workspace, worker.address), timeout=240)
    assert out.stdout.splitlines() == ["SUMS True"], out.stderr[-3000:]
    status = worker.status()
    assert status["objects_fetched"] + status["objects_linked"] == 6
    assert status["deferred"] >= 1
    assert status["objects"][1] == 0  # the Main left: its objects are gone


def test_a_main_gets_only_its_own_objects_and_a_lying_one_fails_only_itself(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import sys, numpy as np
        import distrib, tasks

        if __name__ == "__main__":
            shared = distrib.share(np.ones(1_000_000))
            print("KEY", shared.name, flush=True)
            sys.stdin.readline()  # the hostile Main acts now
            out = distrib.gather([tasks.nap_then_sum(shared, 0) for _ in range(4)], timeout=120)
            print("SUMS", out)
        """)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": worker.address}
    with raw_main(worker, "evil") as evil, ended(subprocess.Popen(
            [PYTHON, "main.py"], cwd=workspace.root, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)) as victim:
        assert victim.stdout is not None and victim.stdin is not None
        key = victim.stdout.readline().split()[1]
        victim.stdin.write("\n")
        victim.stdin.flush()
        wait_for(lambda: (s := worker.status())["objects_fetched"] + s["objects_linked"] >= 1,
                 what="the victim's object")

        # 1. It names the victim's object: the worker asks it (not the victim) for the bytes.
        evil.send_multipart(_codec.encode(m.Submit([m.TaskSpec(
            1, "f" * 64, 1, None, 0, [b"junk"], 0, {key: 8_000_000})])))
        assert _next(evil, m.NeedObjects) == m.NeedObjects([key])
        # 2. It sends other bytes than it declared: only its own task fails.
        evil.send_multipart(_codec.encode(m.Objects([key], [1], frames=(b"short",))))
        reply = _next(evil, m.Results)
        record = reply.results[0].info
        assert reply.results[0].status is m.Outcome.ERROR
        assert record["type"] == "distrib.SerializationError"
        assert "5 bytes sent for an object its calls said has 8,000,000" in record["message"]
        out, err = finish(victim)
    assert out.splitlines()[-1] == "SUMS [1000000.0, 1000000.0, 1000000.0, 1000000.0]", err


def test_a_killed_mains_objects_are_removed(workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=1)
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import numpy as np
        import distrib, tasks

        if __name__ == "__main__":
            shared = distrib.share(np.ones(1_000_000))
            print("SUM", tasks.nap_then_sum(shared, 0).unwrap(timeout=120), flush=True)
            tasks.nap_then_sum(shared, 600).unwrap()
        """)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": worker.address}
    with ended(subprocess.Popen([PYTHON, "main.py"], cwd=workspace.root, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)) as main:
        assert main.stdout is not None
        assert main.stdout.readline() == "SUM 1000000.0\n"
        folders = _object_folders(worker)
        assert len(folders) == 1 and any(folders[0].iterdir())
        wait_for(lambda: worker.status()["busy"] == 1, what="the long task running")
        main.send_signal(signal.SIGKILL)
        main.communicate()
    wait_for(lambda: not folders[0].exists(), what="the killed Main's objects removed")
    assert worker.status()["objects"] == [0, 0]

"""Large frames through /dev/shm between a Main and workers on its machine: real daemons, real
files, and the files gone however the Main ends."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from distrib import _shm
from distrib.wire import _codec, _facts
from distrib.wire import _messages as m
from distrib.wire._envspec import EnvSpec
from tests.helpers import PYTHON, Workspace, ended, wait_for
from tests.integration.test_objects import _next

pytestmark = pytest.mark.skipif(not _shm.available(), reason="no writable /dev/shm here")

ROUND_TRIP = """
    import os, sys
    import numpy as np
    import distrib
    from distrib import distributed

    @distributed
    def scaled(a, k):
        a *= k  # its own pages: the Main's file is not changed
        return a, os.getpid()

    @distributed
    def nap(a, seconds):
        import time
        time.sleep(seconds)

    if __name__ == "__main__":
        print("PID", os.getpid(), flush=True)
        arrays = [np.random.default_rng(i).random(2_500_000) for i in range(6)]  # 20 MB each
        out = distrib.gather([scaled(a, 2.0) for a in arrays], timeout=120)
        print("SAME", all(np.array_equal(r, a * 2.0) for (r, _), a in zip(out, arrays)))
        print("WRITABLE", all(r.flags.writeable for r, _ in out))
        print("UNCHANGED", float(arrays[0][0]) == float(np.random.default_rng(0).random(1)[0]))
        mine = f"distrib-{os.getpid()}-"
        import time
        deadline = time.monotonic() + 30  # (the I/O thread lets go of the calls just after)
        while True:
            left = sorted(p for p in os.listdir("/dev/shm")
                          if p.startswith(mine) and p != mine + "probe")
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        print("FILES", left)
        if sys.argv[1:] == ["hold"]:
            # A call running when the test kills this Main (new bytes: passed arrays would
            # go as shared objects).
            held = nap(np.random.default_rng(99).random(2_500_000), 600)
            print("HOLDING", flush=True)
            held.unwrap()
    """


def _files_of(pid: int) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").glob(f"distrib-{pid}-*"))


def test_arrays_go_through_shared_memory_and_no_file_is_left(workspace: Workspace) -> None:
    workspace.write("main.py", ROUND_TRIP)
    out = workspace.run("main.py", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    pid = int(lines[0].split()[1])
    assert lines[1:] == ["SAME True", "WRITABLE True", "UNCHANGED True", "FILES []"], \
        out.stderr[-3000:]
    assert _files_of(pid) == []


def test_without_shared_memory_the_same_arrays_go_through_sockets(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", ROUND_TRIP)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address,
                                        "DISTRIB_SHARED_MEMORY": "false"}, timeout=300)
    lines = out.stdout.splitlines()
    assert lines[1:] == ["SAME True", "WRITABLE True", "UNCHANGED True", "FILES []"], \
        out.stderr[-3000:]


def test_a_killed_mains_files_are_removed_by_the_worker(workspace: Workspace,
                                                        start_worker) -> None:
    worker = start_worker(threads=1)
    workspace.write("main.py", ROUND_TRIP)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": worker.address}
    with ended(subprocess.Popen([PYTHON, "main.py", "hold"], cwd=workspace.root, env=env,
                                text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)) as main:
        assert main.stdout is not None
        pid = int(main.stdout.readline().split()[1])
        for line in main.stdout:
            if line.startswith("HOLDING"):
                break
        wait_for(lambda: worker.status()["busy"] == 1, what="the long call running")
        assert len(_files_of(pid)) >= 2  # its probe, and the call in flight's argument
        main.send_signal(signal.SIGKILL)
        main.communicate()
    wait_for(lambda: _files_of(pid) == [], what="the killed Main's /dev/shm files removed")


def test_a_main_that_cannot_prove_it_shares_dev_shm_gets_no_shared_memory(
        start_worker) -> None:
    import zmq

    worker = start_worker(threads=1)
    probe = _shm.probe(os.getpid())
    assert probe is not None
    ctx: zmq.Context[object] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(worker.address)

        def hello(token: str) -> m.Message:
            return m.Hello(m.PROTOCOL_VERSION, "raw", "raw", _facts.python_version(),
                           os.getpid(), False, [], {},
                           EnvSpec(_facts.python_version()).encode(), 1 << 20, [], 0,
                           [probe[0].name, token])

        sock.send_multipart(_codec.encode(hello("not the token")))
        assert _next(sock, m.Welcome).shm is False
        # A call naming /dev/shm frames from a Main without shared memory fails, alone.
        sock.send_multipart(_codec.encode(m.Submit([m.TaskSpec(
            1, "f" * 64, 1, None, 0, [b"junk", b""], 0, {}, {f"distrib-{os.getpid()}-x": 1})])))
        result = _next(sock, m.Results).results[0]
        assert result.status is m.Outcome.ERROR
        assert "does not share this Main's /dev/shm" in result.info["message"]
        sock.send_multipart(_codec.encode(hello(probe[1])))
        assert _next(sock, m.Welcome).shm is True
    finally:
        sock.close(0)
        ctx.term()
        _shm.remove_of(os.getpid())


SHARED = """
    import os
    import numpy as np
    import distrib
    from distrib import distributed

    @distributed
    def at(a, i):
        return float(a[i])

    if __name__ == "__main__":
        print("PID", os.getpid())
        table = distrib.share(np.arange(5_000_000, dtype=np.float64))  # 40 MB
        print("AT", distrib.gather([at(table, i * 1000) for i in range(40)], timeout=120)
              == [float(i * 1000) for i in range(40)])
        print("FILES", len([p for p in os.listdir("/dev/shm")
                            if p.startswith(f"distrib-{os.getpid()}-") and "probe" not in p]))
"""


def test_a_shared_object_is_written_once_and_linked_by_the_worker(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", SHARED)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[1:] == ["AT True", "FILES 1"]  # (its one file, while it lives)
    status = worker.status()
    assert status["objects_linked"] == 1 and status["objects_fetched"] == 0
    # The Main is gone: its file too, and the worker's folder of its objects.
    assert _files_of(int(lines[0].split()[1])) == []
    wait_for(lambda: not list(Path("/dev/shm").glob(f"distrib-w{worker.pid}-*")),
             what="the worker's folder of the Main's objects removed")


def test_a_main_naming_a_file_that_is_not_its_object_fails_only_its_own_call(
        start_worker, tmp_path: Path) -> None:
    from tests.helpers import raw_main
    from tests.integration.test_objects import _next

    worker = start_worker(threads=1)
    key = "ab" * 16
    bad = {
        "garbage": lambda p: p.write_bytes(b"\xff" * 64),
        "short": lambda p: p.write_bytes(_shm.object_header([memoryview(b"x" * 10)]) + b"x"),
        "link": lambda p: p.symlink_to(tmp_path / "elsewhere"),
    }
    (tmp_path / "elsewhere").write_bytes(_shm.object_header([memoryview(b"y")]) + b"y")
    with raw_main(worker, "evil", shm=True) as evil:
        for i, (what, make) in enumerate(bad.items(), start=1):
            name = f"distrib-{os.getpid()}-evil{i}"
            make(_shm.ROOT / name)
            try:
                evil.send_multipart(_codec.encode(m.Submit([m.TaskSpec(
                    i, "f" * 64, 1, None, 0, [b"junk"], 0, {key: 10})])))
                assert _next(evil, m.NeedObjects) == m.NeedObjects([key])
                evil.send_multipart(_codec.encode(m.Objects([key], [0], [name])))
                result = _next(evil, m.Results).results[0]
                assert result.status is m.Outcome.ERROR, what
                assert result.info["type"] == "distrib.SerializationError", what
            finally:
                (_shm.ROOT / name).unlink(missing_ok=True)
    assert worker.status()["objects"] == [0, 0]  # nothing kept, and the daemon serves on

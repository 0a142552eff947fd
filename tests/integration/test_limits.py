"""Size limits at and just past each boundary, and calls racing shutdown: real daemons."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from distrib.wire._limits import INLINE_MAX, OUTPUT_CHUNK
from tests.helpers import PYTHON, Workspace, ended, finish, with_tasks

SIZES = """
    import sys
    import distrib
    from distrib import distributed
    from distrib.wire._limits import INLINE_MAX

    @distributed
    def echo(value):
        return value

    @distributed
    def pieces(n, size):
        return [bytearray(b"r" * size) for _ in range(n)]  # out-of-band buffers

    @distributed
    def shout(size):
        raise ValueError("v" * size)

    @distributed
    def say(size):
        print("s" * size)
        return size

    if __name__ == "__main__":
        # Payloads right at, just below and just past the inline limit, both ways.
        sizes = [INLINE_MAX + d for d in (-300, -120, -60, -1, 0, 1, 60, 300)]
        back = distrib.gather([echo(b"a" * n) for n in sizes for _ in range(5)], timeout=120)
        print("ECHO", [len(b) for b in back] == [n for n in sizes for _ in range(5)])
        # Calls of many pieces each just under the inline limit: 10 MB a call.
        args = [[bytearray(b"q" * (INLINE_MAX - 4096)) for _ in range(40)] for _ in range(6)]
        back = distrib.gather([echo(a) for a in args], timeout=120)
        print("PIECES", back == args)
        # Results of many such pieces.
        out = distrib.gather([pieces(40, INLINE_MAX - 4096) for _ in range(6)], timeout=120)
        print("RESULTS", all(len(r) == 40 and len(r[0]) == INLINE_MAX - 4096 for r in out))
        # An error whose message alone is past the header limit.
        try:
            shout(20_000_000).unwrap(timeout=120)
        except ValueError as exc:
            print("ERROR", type(exc).__name__, len(str(exc)))
        # One printed line past the header limit.
        print("SAID", say(10_000_000).unwrap(timeout=120), flush=True)
    """


def test_payloads_at_and_past_each_size_limit_arrive_whole(workspace: Workspace) -> None:
    workspace.write("main.py", SIZES)
    out = workspace.run("main.py", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if not line.startswith("[local] ")]
    assert lines == ["ECHO True", "PIECES True", "RESULTS True", "ERROR ValueError 20000000",
                     "SAID 10000000"]
    # The long line came through whole, cut into pieces that each fit a header.
    said = [line for line in out.stdout.splitlines() if line.startswith("[local] s")]
    assert sum(len(line) - len("[local] ") for line in said) == 10_000_000
    assert len(said) == -(-10_000_000 // OUTPUT_CHUNK) and INLINE_MAX < OUTPUT_CHUNK * 4


def test_a_burst_of_calls_on_many_slots_stays_under_the_header_limit(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    # As a user found it: 24 slots, 200 calls of 200 KB each, all made before the worker
    # answers (here: it starts after the calls), so the first Submit holds as many as fit.
    address = f"ipc://{tmp_path}/late.sock"
    with_tasks(workspace).write("main.py", """
        import tasks

        if __name__ == "__main__":
            responses = [tasks.length(bytes([i % 256]) * 200_000) for i in range(200)]
            print("SUBMITTED", flush=True)
            print("LENGTHS", {r.unwrap(timeout=120) for r in responses})
        """)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": address}
    with ended(subprocess.Popen([PYTHON, "main.py"], cwd=workspace.root, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)) as main:
        assert main.stdout is not None and main.stdout.readline() == "SUBMITTED\n"
        worker = start_worker(threads=24, listen=address, env={"DISTRIB_MAX_MESSAGE_MB": "512"})
        out, _ = finish(main)
    assert out.splitlines() == ["LENGTHS {200000}"]
    assert "exceeds" not in worker.log()
    assert worker.status()["dropped"] == 0


RACE = """
    import collections, sys, threading
    import distrib
    import tasks

    if __name__ == "__main__":
        tasks.ok(0).unwrap(timeout=60)  # the session is up
        responses, lock = [], threading.Lock()
        go = threading.Barrier(9)

        def submitter():
            go.wait()
            for i in range(400):
                r = tasks.ok(i)
                with lock:
                    responses.append(r)

        threads = [threading.Thread(target=submitter) for _ in range(8)]
        for t in threads:
            t.start()
        go.wait()
        distrib.shutdown()
        for t in threads:
            t.join()
        late = tasks.ok(1)
        outcomes = collections.Counter()
        for r in responses + [late]:
            error = r.error(timeout=30)  # a call left unfinished would raise WaitTimeout here
            outcomes["ok" if error is None else type(error).__name__] += 1
        print("OUTCOMES", sorted(outcomes), sum(outcomes.values()))
        print("LATE", type(late.error(0)).__name__)
        distrib.init()
        print("AGAIN", tasks.ok(41).unwrap(timeout=60))
    """


@pytest.mark.long
def test_calls_racing_shutdown_all_end_and_later_ones_are_cancelled(
        workspace: Workspace) -> None:
    with_tasks(workspace).write("main.py", RACE)
    for _ in range(3):  # the race has many interleavings: try a few
        out = workspace.run("main.py", timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.splitlines()
        assert lines[0] in ("OUTCOMES ['Cancelled', 'ok'] 3201", "OUTCOMES ['Cancelled'] 3201")
        assert lines[1:] == ["LATE Cancelled", "AGAIN 42"]
        assert "Traceback" not in out.stderr and "Exception in thread" not in out.stderr


@pytest.mark.parametrize("shared_memory", ["false", "true"])
def test_payloads_larger_than_any_frame_either_side_takes_travel_in_pieces(
        workspace: Workspace, shared_memory: str) -> None:
    workspace.write("main.py", """\
        import hashlib
        from distrib import distributed

        @distributed
        def digest_and_grow(data, n):
            return hashlib.sha256(data).hexdigest(), bytearray(b"g" * n)

        @distributed
        def shout(size):
            raise ValueError("v" * size)

        if __name__ == "__main__":
            data = bytes(range(256)) * 20_000  # 5 MB: five times the frame limit
            seen, grown = digest_and_grow(data, 3_000_000).unwrap(timeout=120)
            print("ARG", seen == hashlib.sha256(data).hexdigest())
            print("RESULT", len(grown) == 3_000_000 and set(grown) == {ord("g")})
            try:
                shout(3_000_000).unwrap(timeout=120)
            except ValueError as exc:
                print("ERROR", len(str(exc)))
        """)
    # Both the Main and its local worker take frames of at most 1 MiB (with shared memory,
    # the large argument and result go through /dev/shm instead; the error does not).
    out = workspace.run("main.py", env={"DISTRIB_MAX_MESSAGE_MB": "1",
                                        "DISTRIB_SHARED_MEMORY": shared_memory}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["ARG True", "RESULT True", "ERROR 3000000"]


def test_a_max_payload_fails_the_side_that_made_the_payload_naming_size_and_setting(
        workspace: Workspace) -> None:
    workspace.write("main.py", """\
        from distrib import SerializationError, distributed

        @distributed
        def grow(n):
            return b"r" * n

        if __name__ == "__main__":
            print("SMALL", len(grow(1000).unwrap(timeout=120)))
            try:
                grow(b"a" * 3_000_000)
            except SerializationError as exc:
                print("ARGS", exc)
            try:
                grow(3_000_000).unwrap(timeout=120)
            except SerializationError as exc:
                print("RESULT", exc)
        """)
    out = workspace.run("main.py", env={"DISTRIB_MAX_PAYLOAD": "2M"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "SMALL 1000"
    assert lines[1].startswith("ARGS the arguments of grow pickle to 3,000,")
    assert "more than max_payload (2,097,152 bytes" in lines[1]
    assert lines[2].startswith("RESULT the result of grow pickles to 3,000,")
    assert "max_payload (2,097,152 bytes)" in lines[2]

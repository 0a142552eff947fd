"""Payloads and shared objects at and past a frame's limit (512 MiB) through a keyed worker,
over sockets alone.

libzmq counts a frame as it is on the wire, encrypted on a keyed link (33 bytes more), so a
piece as large as the limit once closed the connection: every such call failed as WorkerLost
and took the Main's other tasks with it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from distrib.wire import _keys
from tests.helpers import Worker, Workspace

MAIN = """
    import resource
    import sys
    import distrib
    from distrib import distributed

    MIB = 1 << 20

    def pattern(n):
        return bytes(range(256)) * (n // 256)

    def intact(data, n):
        return len(data) == n and all(data[i] == i % 256 for i in (0, n // 3, n // 2, n - 1))

    @distributed
    def relay(data, n):
        import resource
        ok = intact(data, len(data))
        del data
        return ok, pattern(n), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10

    @distributed
    def measure(data):
        return len(data), intact(data, len(data))

    @distributed
    def small(x):
        return x + 1

    def check(size, back):
        others = small.map(range(20))  # work of the same Main alongside, never dropped
        data = pattern(size)
        ok, result, task_peak = relay(data, back).unwrap(timeout=600)
        del data
        print(size // MIB, back // MIB, ok, intact(result, back),
              distrib.gather(others, timeout=600) == list(range(1, 21)))
        return task_peak

    if __name__ == "__main__":
        peaks = [check(512 * MIB, 600 * MIB), check(1024 * MIB, 1024 * MIB)]
        shared = distrib.share(pattern(600 * MIB))  # sent in an Objects message
        print("SHARED", measure(shared).unwrap(timeout=600) == (600 * MIB, True))
        del shared
        main_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
        print("PEAKS", main_peak, max(peaks), file=sys.stderr)
        print("MAIN", main_peak // MIB, "TASK", max(peaks) // MIB)
    """


def _peak_rss(pid: int) -> int:
    """A live process's peak resident memory in bytes (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no VmHWM for {pid}")


def _keyed_worker(start_worker, tmp_path: Path, env: dict[str, str]
                  ) -> tuple[Worker, dict[str, str]]:
    """Start a keyed worker; it, and the environment of a Main that uses it with its key."""
    main, own = _keys.generate(), _keys.generate()
    _keys.write(tmp_path / "main.key", main)
    _keys.write(tmp_path / "worker.key", own)
    (tmp_path / "mains").write_text(f"{main.public}\n")
    worker = start_worker(threads=2, env=env, extra=(
        "--key", str(tmp_path / "worker.key"), "--authorized-keys", str(tmp_path / "mains")))
    return worker, {**env, "DISTRIB_KEY": str(tmp_path / "main.key"),
                    "DISTRIB_WORKERS": f"{worker.address} {worker.public_key}"}


@pytest.mark.long
@pytest.mark.timeout(600)  # (gigabytes encrypted and copied, beside other tests)
def test_a_gibibyte_each_way_and_frames_at_and_past_the_limit_cross_a_keyed_worker(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    # Both sides at the default limit of 512 MiB a frame, and shared memory off.
    big = {"DISTRIB_MAX_MESSAGE_MB": "512", "DISTRIB_SHARED_MEMORY": "false"}
    worker, env = _keyed_worker(start_worker, tmp_path, big)
    workspace.write("main.py", MAIN)
    out = workspace.run("main.py", env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[:3] == ["512 600 True True True", "1024 1024 True True True", "SHARED True"], \
        out.stderr[-3000:]
    assert "WorkerLost" not in out.stderr and "silent for" not in worker.log()
    assert "malformed" not in worker.log() and "dropped Submit" not in worker.log()
    # No side holds more than a few copies of the largest payload (1 GiB): the Main its
    # argument, and the result joined (each piece released as it is copied) and unpickled;
    # the daemon the argument joined and the result; the task its argument (as the frame
    # read from its pipe and unpickled) and its result.
    main_mib, task_mib = int(lines[3].split()[1]), int(lines[3].split()[3])
    daemon_mib = _peak_rss(worker.pid) >> 20
    print(f"peak resident memory, MiB: Main {main_mib}, daemon {daemon_mib}, task {task_mib}")
    assert main_mib < 3.5 * 1024 and daemon_mib < 2.5 * 1024 and task_mib < 3.5 * 1024


TOO_LARGE = """
    import distrib
    from distrib import SerializationError, distributed
    from distrib.main import _session

    @distributed
    def grow(n, cap):
        import sys
        caller = sys._getframe(1)  # the executor's, run as __main__
        while "MAX_PAYLOAD_BYTES" not in caller.f_globals:
            caller = caller.f_back
        caller.f_globals["MAX_PAYLOAD_BYTES"] = cap  # what one message carries, made small
        return b"r" * n

    if __name__ == "__main__":
        others = grow.map([1000] * 20, [1 << 30] * 20)  # the Main's other work meanwhile
        try:
            _session.MAX_PAYLOAD_BYTES = 2_000_000
            grow(b"a" * 3_000_000, 0)
        except SerializationError as exc:
            print("ARGS", exc)
        finally:
            _session.MAX_PAYLOAD_BYTES = 1 << 40
        try:
            grow(3_000_000, 2_000_000).unwrap(timeout=120)
        except SerializationError as exc:
            print("RESULT", exc)
        print("OTHERS", [len(r) for r in distrib.gather(others, timeout=120)] == [1000] * 20)
    """


def test_a_payload_larger_than_a_message_carries_fails_its_own_call_naming_size_and_limit(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    worker, env = _keyed_worker(start_worker, tmp_path, {"DISTRIB_SHARED_MEMORY": "false"})
    workspace.write("main.py", TOO_LARGE)
    out = workspace.run("main.py", env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"ARGS the arguments of grow pickle to 3,000,\d{3} bytes, more than one "
                        r"message to a worker carries \(2,000,000 bytes\); pass less, or pass "
                        r"it in parts", lines[0]), lines
    assert re.fullmatch(r"RESULT the result of grow pickles to 3,000,\d{3} bytes, more than one "
                        r"message to the Main carries \(2,000,000 bytes\); return less, or "
                        r"return it in parts", lines[1]), lines
    assert lines[2:] == ["OTHERS True"], out.stderr[-3000:]
    assert "WorkerLost" not in out.stderr and "silent for" not in worker.log()

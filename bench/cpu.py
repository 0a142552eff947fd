"""CPU time per call on the embedded cluster, per process and thread: where the per-call work
goes, for W1 (many calls at once) and W2 (call then wait).

The Main's threads (the user's, the I/O thread, the rest), the worker daemon's threads and
its executors are read from /proc (user + system time) before and after the calls, so the
figures hold on a busy machine where wall time does not. The next feature that adds work to
a call shows here first. So are their sleeps per call (voluntary context switches: each is a
wait for a message, a lock or the interpreter lock, then a wake-up), which a call alone pays
in full: a thread woken on a cold cache costs more than the same work done under load.

    bench/.venv/bin/python -m bench.cpu [--calls 5000] [--only W1,W2] [--profile DIR]

``--profile DIR`` runs the Main's user thread under cProfile and writes DIR/main-W1.prof (and
so on). The same figures are the bench's W1-cpu and W2-cpu workloads (``bench/run --only
W1,W2``).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.frameworks import load
from bench.workloads import inc, noop

TICK = os.sysconf("SC_CLK_TCK")


def sleeps(pid: int, tid: int) -> int:
    """How many times thread ``tid`` of ``pid`` slept (its voluntary context switches)."""
    try:
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    except OSError:
        return 0
    at = status.find("voluntary_ctxt_switches:")
    return int(status[at:].split(None, 2)[1]) if at >= 0 else 0


def _thread_times(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (name, CPU seconds) of every thread of ``pid``."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


ROLES = {  # metric key -> row label
    "user_us": "Main: the user's thread",
    "io_us": "Main: its I/O thread (distrib-io)",
    "main_other_us": "Main: its other threads (ZeroMQ's)",
    "daemon_us": "worker daemon",
    "executors_us": "executors",
}


def _snapshot() -> dict[tuple[str, int, int], tuple[float, int]]:
    """(role, pid, tid) -> (CPU seconds, sleeps), for the Main, the daemon and the
    executors."""
    me = psutil.Process()
    user, io = threading.main_thread().native_id, {
        t.native_id for t in threading.enumerate() if t.name == "distrib-io"}
    out: dict[tuple[str, int, int], tuple[float, int]] = {}
    for tid, (_name, seconds) in _thread_times(me.pid).items():
        role = "user_us" if tid == user else "io_us" if tid in io else "main_other_us"
        out[(role, me.pid, tid)] = seconds, sleeps(me.pid, tid)
    for child in me.children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        role = "daemon_us" if "worker" in cmd and "distrib" in cmd else "executors_us"
        for tid, (_name, seconds) in _thread_times(child.pid).items():
            out[(role, child.pid, tid)] = seconds, sleeps(child.pid, tid)
    return out


def _per_role(before: dict[tuple[str, int, int], tuple[float, int]],
              after: dict[tuple[str, int, int], tuple[float, int]]
              ) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds and sleeps between two snapshots, by role."""
    roles, slept = dict.fromkeys(ROLES, 0.0), dict.fromkeys(ROLES, 0.0)
    for key, (seconds, n) in after.items():
        was = before.get(key, (0.0, 0))
        roles[key[0]] += seconds - was[0]
        slept[key[0]] += n - was[1]
    return roles, slept


def trace(fw: Any, calls: int, way: str, profile: Path | None = None
          ) -> tuple[dict[str, float], float, dict[str, float]]:
    """CPU µs per call by role (``ROLES``) for ``calls`` calls of inc on ``fw`` (distrib,
    started), all at once (``way`` "W1") or one after the other ("W2"); the wall time; and
    the sleeps per call by role."""
    time.sleep(0.2)  # (let the warm-up's stragglers settle)
    profiler = cProfile.Profile() if profile else None
    before = _snapshot()
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    if way == "W1":
        handles = [fw.submit(inc, i) for i in range(calls)]
        results = [fw.result(h) for h in handles]
    else:
        results = [fw.result(fw.submit(inc, i)) for i in range(calls)]
    if profiler and profile:
        profiler.disable()
        profile.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(profile / f"main-{way}.prof"))
    wall = time.perf_counter() - t0
    after = _snapshot()
    if results != [i + 1 for i in range(calls)]:
        raise AssertionError("inc returned wrong results")
    roles, slept = _per_role(before, after)
    return ({k: v / calls * 1e6 for k, v in roles.items()}, wall,
            {k: v / calls for k, v in slept.items()})


def warm(fw: Any) -> None:
    """Executors started and imported, the run times known."""
    for h in [fw.submit(noop) for _ in range(50)]:
        fw.result(h)
    for h in [fw.submit(inc, i) for i in range(500)]:
        fw.result(h)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--only", default="W1,W2")
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args(argv)
    fw = load("distrib")
    fw.start(2)
    rows: dict[str, dict[str, float]] = {}
    walls: dict[str, float] = {}
    naps: dict[str, dict[str, float]] = {}
    try:
        warm(fw)
        for name in args.only.split(","):
            rows[name], walls[name], naps[name] = trace(fw, args.calls, name, args.profile)
    finally:
        fw.stop()
    names = list(rows)
    print(f"CPU µs per call (user + system, from /proc), {args.calls:,} calls, "
          f"nproc {os.cpu_count()}, Python {sys.version.split()[0]}\n")
    print("| process / thread | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for key, label in ROLES.items():
        print(f"| {label} | " + " | ".join(f"{rows[n][key]:,.1f}" for n in names) + " |")
    print("| **all** | " + " | ".join(f"**{sum(rows[n].values()):,.1f}**" for n in names)
          + " |")
    print("| wall µs per call (busy machine: noisy) | " + " | ".join(
        f"{walls[n] / args.calls * 1e6:,.1f}" for n in names) + " |")
    print("\nSleeps per call (voluntary context switches: waits, each ended by a wake-up)\n")
    print("| process / thread | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for key, label in ROLES.items():
        print(f"| {label} | " + " | ".join(f"{naps[n][key]:,.2f}" for n in names) + " |")
    print("| **all** | " + " | ".join(f"**{sum(naps[n].values()):,.2f}**" for n in names)
          + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""CPU time per call on the embedded cluster, per process and thread: where the per-call work
goes, for W1 (many calls at once) and W2 (call then wait).

The Main's threads (the user's, the I/O thread, the rest), the worker daemon's threads and
its executors are read from /proc (user + system time) before and after the calls, so the
figures hold on a busy machine where wall time does not. The next feature that adds work to
a call shows here first.

    bench/.venv/bin/python -m bench.cpu [--calls 5000] [--only W1,W2] [--profile DIR]

``--profile DIR`` runs the Main under cProfile and writes DIR/main-W1.prof (and so on); the
daemon and executors are profiled by ``DISTRIB_PROFILE_DIR`` (set it before the run).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys
import threading
import time
from pathlib import Path

import psutil

from bench.frameworks import load
from bench.workloads import inc, noop

TICK = os.sysconf("SC_CLK_TCK")


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


def _snapshot() -> dict[tuple[str, int, int], float]:
    """(role, pid, tid) -> CPU seconds, for the Main, the daemon and the executors."""
    me = psutil.Process()
    python_threads = {t.native_id: t.name for t in threading.enumerate()}
    main_tid = threading.main_thread().native_id
    out: dict[tuple[str, int, int], float] = {}
    for tid, (name, seconds) in _thread_times(me.pid).items():
        if tid == main_tid:
            role = "Main: user thread"
        elif "io" in python_threads.get(tid, "").lower() or "distrib" in python_threads.get(
                tid, "").lower():
            role = f"Main: {python_threads[tid]}"
        elif tid in python_threads:
            role = f"Main: {python_threads[tid]}"
        else:
            role = f"Main: {name} (C threads)"
        out[(role, me.pid, tid)] = seconds
    for child in me.children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        role = "daemon" if " worker" in cmd and "executor" not in cmd else "executors"
        for tid, (_name, seconds) in _thread_times(child.pid).items():
            out[(role, child.pid, tid)] = seconds
    return out


def _per_role(before: dict[tuple[str, int, int], float],
              after: dict[tuple[str, int, int], float]) -> dict[str, float]:
    roles: dict[str, float] = {}
    for key, seconds in after.items():
        roles[key[0]] = roles.get(key[0], 0.0) + seconds - before.get(key, 0.0)
    return roles


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
    try:
        for h in [fw.submit(noop) for _ in range(50)]:
            fw.result(h)
        for h in [fw.submit(inc, i) for i in range(500)]:
            fw.result(h)
        for name in args.only.split(","):
            time.sleep(0.2)  # (let the warm-up's stragglers settle)
            profile = cProfile.Profile() if args.profile else None
            before = _snapshot()
            t0 = time.perf_counter()
            if profile:
                profile.enable()
            if name == "W1":
                handles = [fw.submit(inc, i) for i in range(args.calls)]
                results = [fw.result(h) for h in handles]
            else:
                results = [fw.result(fw.submit(inc, i)) for i in range(args.calls)]
            if profile:
                profile.disable()
                args.profile.mkdir(parents=True, exist_ok=True)
                profile.dump_stats(str(args.profile / f"main-{name}.prof"))
            walls[name] = time.perf_counter() - t0
            after = _snapshot()
            assert results == [i + 1 for i in range(args.calls)]
            rows[name] = _per_role(before, after)
    finally:
        fw.stop()
    names = list(rows)
    roles = sorted({role for row in rows.values() for role in row})
    print(f"CPU µs per call (user + system, from /proc), {args.calls:,} calls, "
          f"nproc {os.cpu_count()}, Python {sys.version.split()[0]}\n")
    print("| process / thread | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for role in roles:
        cells = [f"{rows[n].get(role, 0.0) / args.calls * 1e6:,.1f}" for n in names]
        if all(c in ("0.0", "-0.0") for c in cells):
            continue
        print(f"| {role} | " + " | ".join(cells) + " |")
    print("| **all** | " + " | ".join(
        f"**{sum(rows[n].values()) / args.calls * 1e6:,.1f}**" for n in names) + " |")
    print("| wall µs per call (busy machine: noisy) | " + " | ".join(
        f"{walls[n] / args.calls * 1e6:,.1f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

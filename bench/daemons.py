"""What the worker daemons cost when several Mains share them: CPU per daemon per second.

    bench/.venv/bin/python -m bench.daemons [--workers 30] [--mains 5] [--tasks 60] [--seconds 0.5]
    (--quick: 6 workers, 2 Mains)

``--workers`` one-slot daemons on this machine (``bench.scale``'s cluster: each its own key and
cache, no sandbox) and ``--mains`` Mains with alike contexts, each running ``--tasks`` x
sleep(``--seconds``) once all are warm. Reported, per daemon (its own process, not the
executors it started), from psutil's CPU times: CPU seconds per second idle with no Main,
while the Mains join and warm up (in all), idle with the Mains connected, and during the run
(with its CPU per task over all daemons, and the executors' CPU per second for comparison).
Run it with ``--mains 1`` against several to see what grows with the Mains.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import psutil

from bench import scale

IDLE_S = 10.0  # seconds each idle phase is measured over


def cpu(c: scale.Cluster) -> tuple[float, float]:
    """CPU seconds of the daemons themselves, and of the processes they started."""
    daemons = started = 0.0
    for p in c.procs:
        try:
            proc = psutil.Process(p.pid)
            t = proc.cpu_times()
            daemons += t.user + t.system
            for child in proc.children(recursive=True):
                t = child.cpu_times()
                started += t.user + t.system
        except psutil.Error:
            pass
    return daemons, started


def idle_cpu(c: scale.Cluster, workers: int) -> float:
    """The daemons' CPU seconds per second and per daemon over ``IDLE_S`` seconds."""
    d0, _ = cpu(c)
    t0 = time.monotonic()
    time.sleep(IDLE_S)
    return (cpu(c)[0] - d0) / (time.monotonic() - t0) / workers


def measure(workers: int, mains: int, tasks: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"workers": workers, "mains": mains, "tasks_per_main": tasks}
    with scale.cluster(mains) as c:
        c.start(workers)
        time.sleep(3)  # (their start-up done)
        out["idle_no_main"] = idle_cpu(c, workers)
        d0, _ = cpu(c)
        t0 = time.monotonic()
        procs = [scale.main_proc(c, ["mains", str(workers), str(tasks), str(seconds)], i)
                 for i in range(mains)]
        scale.await_ready(procs)
        out["join_s"] = time.monotonic() - t0
        out["join_cpu"] = (cpu(c)[0] - d0) / workers  # (in all, not per second)
        time.sleep(3)
        out["idle_mains"] = idle_cpu(c, workers)
        d0, e0 = cpu(c)
        t0 = time.monotonic()
        scale.go(procs, [tasks] * mains, c.root / "runs.log")
        for p in procs:
            scale.result(p)
        d1, e1 = cpu(c)
        took = time.monotonic() - t0
        out["run_s"] = took
        out["run"] = (d1 - d0) / took / workers
        out["run_executors"] = (e1 - e0) / took / workers
        out["run_per_task"] = (d1 - d0) / (tasks * mains)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.daemons", description=__doc__)
    parser.add_argument("--workers", type=int, default=30)
    parser.add_argument("--mains", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=None, help="per Main (default: a "
                        "second's worth of sleeps per slot over all Mains)")
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true")
    a = parser.parse_args()
    workers, mains = (6, 2) if a.quick else (a.workers, a.mains)
    tasks = a.tasks or max(1, int(10 * workers / mains))
    r = measure(workers, mains, tasks, a.seconds)
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()}))
    print(f"\n| workers | Mains | idle, no Main | idle, Mains connected | run | per task "
          f"(all daemons) | join (in all) |\n|---|---|---|---|---|---|---|\n"
          f"| {workers} | {mains} | {r['idle_no_main'] * 1e3:.1f} ms/s | "
          f"{r['idle_mains'] * 1e3:.1f} ms/s | {r['run'] * 1e3:.1f} ms/s | "
          f"{r['run_per_task'] * 1e3:.1f} ms | {r['join_cpu']:.2f} s |")


if __name__ == "__main__":
    main()

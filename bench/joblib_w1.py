"""A W1-like joblib run: ``calls`` tiny calls through ``Parallel``, with loky and with distrib
side by side, in one script (the same machine, the same moment).

    .venv/bin/python -m bench.joblib_w1 [--calls 20000] [--jobs 2] [--reps 3] [--baseline]

Each backend is warmed up first (loky's processes start, distrib's local cluster starts and
its executors are ready), then timed ``--reps`` times with ``batch_size="auto"`` (joblib's
default); with ``--baseline`` distrib also with ``batch_size=1``, one task per call (what
the backend did before it batched automatically). distrib runs on the embedded local cluster
with ``--jobs`` slots, the repository as its workspace. Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench.workloads import inc


def _run(backend: str, calls: int, jobs: int, batch_size: Any) -> float:
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=jobs, backend=backend, batch_size=batch_size)
    t0 = time.perf_counter()
    got = parallel(delayed(inc)(i) for i in range(calls))
    elapsed = time.perf_counter() - t0
    if got != [i + 1 for i in range(calls)]:
        raise AssertionError(f"{backend}: wrong results")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--baseline", action="store_true",
                        help="distrib with batch_size=1 too (one task per call: slow)")
    args = parser.parse_args()
    import distrib
    import distrib.joblib  # noqa: F401  (registers "distrib")

    # The workspace must hold the ``bench`` package, whose ``inc`` the workers import.
    distrib.init(local_threads=args.jobs, workspace=Path(__file__).resolve().parents[1])

    rows = []
    runs: list[tuple[str, Any]] = [("loky", "auto"), ("distrib", "auto")]
    for backend, batch_size in runs + ([("distrib", 1)] if args.baseline else []):
        _run(backend, min(args.calls, 2000), args.jobs, batch_size)  # (warm-up)
        times = [_run(backend, args.calls, args.jobs, batch_size) for _ in range(args.reps)]
        median = statistics.median(times)
        rows.append((backend, str(batch_size), median, args.calls / median))
    distrib.shutdown()
    print(f"{args.calls} x inc(x), n_jobs={args.jobs}, median of {args.reps}\n")
    print("| backend | batch_size | seconds | calls/s |")
    print("| --- | --- | --- | --- |")
    for backend, batch, median, rate in rows:
        print(f"| {backend} | {batch} | {median:.2f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()

"""A worker daemon's start: CPU and wall time from ``python -m distrib worker`` to its ready line.

Every cold start of the embedded cluster, and nearly every test, waits for this line. CPU is
the daemon's own (all its threads, from /proc/<pid>/task/*/schedstat, in nanoseconds), read
the moment the line arrives; wall time is from the start of the command. With several source
trees (``--src``, each a folder holding ``distrib/``), starts alternate between them, so a busy
machine weighs on each alike; the medians are printed.

    bench/.venv/bin/python -m bench.daemon_start [--runs 15] [--src A/src --src B/src]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _cpu(pid: int) -> float:
    total = 0
    for stat in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(stat) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass  # (a thread that ended meanwhile)
    return total / 1e9


def start(src: str | None, cache: str) -> tuple[float, float, str]:
    """(CPU seconds, wall seconds, ready line) of one daemon's start; the daemon is stopped."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "distrib", "worker", "--listen", "127.0.0.1:0", "--threads", "1",
         "--cache-dir", cache], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=env, cwd=tempfile.gettempdir())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        cpu, wall = _cpu(proc.pid), time.perf_counter() - began
    finally:
        proc.terminate()
        proc.wait()
    if "ready" not in line:
        raise SystemExit(f"the daemon did not say it was ready: {line!r}")
    return cpu, wall, line.strip()


def arguments(doc: str, runs: int) -> tuple[list[str | None], int]:
    """The source trees to alternate between (None: the installed distrib), and the runs of
    each: ``--src`` (repeated) and ``--runs``, for this and ``bench.main_start``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--src", action="append", default=[],
                        help="a folder holding distrib/ (repeat to compare; default: installed)")
    args = parser.parse_args()
    return list(args.src) or [None], args.runs


def main() -> None:
    trees, count = arguments(__doc__, 15)
    seen: dict[str | None, list[tuple[float, float]]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory(prefix="daemon-start-") as folder:
        for run in range(count):
            for i, tree in enumerate(trees):
                cpu, wall, _ = start(tree, os.path.join(folder, f"{i}-{run}"))
                seen[tree].append((cpu, wall))
    for tree, runs in seen.items():
        cpus, walls = [c for c, _ in runs], [w for _, w in runs]
        print(f"{tree or 'installed'}: CPU to the ready line median "
              f"{statistics.median(cpus) * 1000:.0f} ms (min {min(cpus) * 1000:.0f}), wall "
              f"median {statistics.median(walls) * 1000:.0f} ms, {len(runs)} starts")


if __name__ == "__main__":
    main()

"""A run's end with one worker three times slower than the others, against equal speed.

    .venv/bin/python -m bench.moves [--workers 10] [--tasks 200] [--seconds 0.2] [--slow 3]
                                    [--extra 16] [--rounds 1]

``--workers`` daemons of one slot each on this machine (each its own cache, no sandbox),
and one Main running ``--tasks`` x sleep(``--seconds``) after a warm round (every worker's
executor up). In the slowed run, one worker's tasks sleep ``--slow`` times as long (a
variable of that daemon, read by the task). Reported per run: its end (seconds from the
first call to the last result), the tasks each worker ran, and the ideal end for those
speeds, the Main's CPU time over the run. ``--extra``: the scheduler's floor on tasks queued beyond a worker's slots
(``ahead``'s ``extra``; 16 is the default), to compare queue depths.

The issue's bar: the slowed run ends no later than 10 % after the equal-speed run. One slot
of ``--workers`` at a third of the speed leaves (workers - 2/3) / workers of the capacity:
with 10 workers the ideal is 7 % later, so the bar leaves 3 % for the moves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

SCRIPT = textwrap.dedent("""
    import json, logging, os, sys, time
    import distrib
    from distrib import distributed, gather
    from distrib.main import _session, _scheduler

    @distributed
    def nap(seconds):
        time.sleep(seconds * float(os.environ.get("MOVE_SLOWDOWN", "1")))
        return os.environ.get("MOVE_WORKER", "?")

    if __name__ == "__main__":
        n, seconds, extra, workers = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), \\
            sys.argv[4:]
        if os.environ.get("BENCH_DEBUG"):
            logging.basicConfig(level=logging.DEBUG, format="%(relativeCreated)d %(message)s")
        _session.Scheduler = lambda python: _scheduler.Scheduler(python, extra)  # (--extra)
        distrib.init(workers=workers)
        while len(set(gather([nap(0.05) for _ in range(4 * len(workers))], timeout=600))) \\
                < len(workers):
            pass  # (warm: every worker ran a task, its executor is up)
        start, cpu = time.monotonic(), time.process_time()
        who = gather([nap(seconds) for _ in range(n)], timeout=3600)
        end, cpu = time.monotonic() - start, time.process_time() - cpu
        print(json.dumps({"end": end, "cpu": cpu,
                          "ran": {w: who.count(w) for w in sorted(set(who))}}))
    """)


def run(root: Path, workers: int, tasks: int, seconds: float, slow: float,
        extra: int) -> dict[str, Any]:
    """One run: start the daemons (the first one slowed by ``slow``), run the Main, stop."""
    procs: list[subprocess.Popen[str]] = []
    addresses = []
    try:
        for i in range(workers):
            env = {**os.environ, "MOVE_WORKER": f"w{i}",
                   "MOVE_SLOWDOWN": str(slow if i == 0 else 1)}
            proc = subprocess.Popen(
                [sys.executable, "-m", "distrib", "worker", "--listen", "127.0.0.1:0",
                 "--threads", "1", "--name", f"w{i}", "--cache-dir", str(root / f"cache{i}"),
                 "--no-sandbox"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True, env=env)
            procs.append(proc)
            assert proc.stdout is not None
            ready = proc.stdout.readline().split()
            addresses.append(ready[ready.index("on") + 1])
        (root / "ws").mkdir(exist_ok=True)
        (root / "ws" / "main.py").write_text(SCRIPT)
        out = subprocess.run(
            [sys.executable, "main.py", str(tasks), str(seconds), str(extra), *addresses],
            cwd=root / "ws", capture_output=True, text=True, timeout=3600,
            env={**os.environ, "DISTRIB_CACHE_DIR": str(root / "main-cache")})
        if os.environ.get("BENCH_DEBUG"):  # (the Main's log, to see its moves)
            sys.stderr.write(out.stderr)
        if out.returncode != 0:
            raise RuntimeError(f"the Main failed:\n{out.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
            if proc.stdout is not None:
                proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.moves")
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=0.2)
    parser.add_argument("--slow", type=float, default=3.0)
    parser.add_argument("--extra", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    w, n, s = args.workers, args.tasks, args.seconds
    print(f"{w} workers x 1 slot, {n} x sleep({s}), ahead's extra {args.extra}\n")
    print("| run | end (s) | ideal (s) | end / equal run's | Main CPU (s) | tasks per worker "
          "(w0 slowed) |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for _ in range(args.rounds):
        ends = {}
        for name, slow in (("equal speed", 1.0), (f"w0 {args.slow:g}x slower", args.slow)):
            with tempfile.TemporaryDirectory() as tmp:
                result = run(Path(tmp), w, n, s, slow, args.extra)
            end = float(result["end"])
            ends[name] = end
            ideal = n * s / (w - 1 + 1 / slow)  # (every slot busy to the end)
            ran = result["ran"]
            first = next(iter(ends.values()))
            print(f"| {name} | {end:.2f} | {ideal:.2f} | {end / first:.3f} | "
                  f"{float(result['cpu']):.2f} | "
                  f"{' '.join(str(ran.get(f'w{i}', 0)) for i in range(w))} |", flush=True)


if __name__ == "__main__":
    main()

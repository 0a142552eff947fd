"""Backup copies of stragglers (``@distributed(speculative=True)``): what a stopped worker
costs a run with and without them, and what they cost a run without faults.

    bench/.venv/bin/python -m bench.speculation [--workers 4] [--slots 2] [--tasks 64]
                                                [--seconds 0.5] [--rounds 3]

``--workers`` daemons of ``--slots`` slots on this machine, one Main running ``--tasks`` x
sleep(``--seconds``) after a warm round. Scenarios, each ``--rounds`` times:

- *stopped*: the worker that starts the run's last call is stopped (SIGSTOP) as it starts it;
  with ``speculative=True`` and without. Reported: how long after the stop the run ended, and
  how far its last call ended behind the calls that did not wait on the stopped worker (the
  issue asks for "within 2 s of the others"); the stopped worker is resumed afterwards.
- *no fault*: no worker stopped, with ``speculative=True`` and without: the copies started
  anyway, the calls that ran twice (a copy whose original was still queued withdraws it
  before it runs) and the wall time, and the spread of run times (each run's
  own sleep as the task measured it, median / 90th / 99th percentile / max), from which the
  policy's multiple and floor were chosen (docs/design.md, "Backup copies of stragglers").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

SCRIPT = textwrap.dedent("""
    import json, logging, os, sys, time
    from concurrent.futures import as_completed

    import distrib
    from distrib import distributed


    def nap(i, seconds, log):
        start = time.time()
        with open(log, "a") as f:
            f.write(f"{i} {os.getpid()} {start}\\n")
        time.sleep(seconds)
        return i, start, time.time()


    backed = distributed(speculative=True)(nap)
    plain = distributed(nap)

    if __name__ == "__main__":
        mode, n, seconds, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
        distrib.init()
        logging.getLogger("distrib").setLevel(logging.INFO)
        fn = backed if mode == "speculative" else plain
        distrib.gather(fn.map(range(n), seconds=0.01, log=os.devnull))  # the warm round
        print("WARM", flush=True)
        ended = {}
        calls = fn.map(range(n), seconds=seconds, log=log)
        for r in as_completed(calls, timeout=600):
            ended[r.result()[0]] = time.time()
        runs = [r.result()[2] - r.result()[1] for r in calls]
        print(json.dumps({"ended": ended, "runs": runs}), flush=True)
    """)


def start_workers(root: Path, count: int, slots: int) -> list[tuple[subprocess.Popen[str], str]]:
    workers = []
    for i in range(count):
        proc = subprocess.Popen(
            [sys.executable, "-m", "distrib", "worker", "--listen", "127.0.0.1:0", "--threads",
             str(slots), "--name", f"w{i}", "--cache-dir", str(root / f"cache-{i}"),
             "--no-sandbox"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        workers.append((proc, ready[ready.index("on") + 1]))
    return workers


def one_run(root: Path, workers: list[tuple[subprocess.Popen[str], str]], mode: str,
            tasks: int, seconds: float, stop: bool) -> dict[str, float]:
    log = root / f"runs-{time.monotonic_ns()}.log"
    log.touch()
    env = {**os.environ, "DISTRIB_WORKERS": ",".join(a for _, a in workers),
           "DISTRIB_CACHE_DIR": str(root / "main-cache")}
    main = subprocess.Popen([sys.executable, "main.py", mode, str(tasks), str(seconds),
                             str(log)], cwd=root / "ws", env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert main.stdout is not None
    stopped: psutil.Process | None = None
    stopped_at = 0.0
    try:
        if stop:
            while stopped is None and main.poll() is None:
                for line in log.read_text().splitlines():
                    i, pid, _ = line.split()
                    if int(i) == tasks - 1:
                        parents = {p.pid for p in psutil.Process(int(pid)).parents()}
                        proc = next(p for p, _ in workers if p.pid in parents)
                        os.kill(proc.pid, signal.SIGSTOP)
                        stopped, stopped_at = psutil.Process(proc.pid), time.time()
                        break
                time.sleep(0.01)
        out, err = main.communicate(timeout=900)
    finally:
        if stopped is not None:
            os.kill(stopped.pid, signal.SIGCONT)
        if main.poll() is None:
            main.kill()
            main.communicate()
    if main.returncode != 0:
        raise RuntimeError(f"the Main failed:\n{err[-3000:]}")
    found = json.loads(out.splitlines()[-1])
    ended = {int(k): v for k, v in found["ended"].items()}
    copied = {int(line.split("#")[1].split()[0]) - tasks - 1  # (task ids: the warm round first)
              for line in err.splitlines() if "a second copy starts" in line}
    runs = sorted(found["runs"])
    started = [line.split()[0] for line in log.read_text().splitlines()]
    figures = {"copies": float(len(copied)), "twice": float(len(started) - len(set(started))),
               "wall": max(ended.values()) - min(float(line.split()[2]) for line in
                                                 log.read_text().splitlines()),
               "median": statistics.median(runs), "p90": runs[int(0.9 * (len(runs) - 1))],
               "p99": runs[int(0.99 * (len(runs) - 1))], "max": runs[-1]}
    if stop:
        on_time = [t for i, t in ended.items() if i not in copied and t <= stopped_at + seconds]
        figures["after_stop"] = max(ended.values()) - stopped_at
        figures["behind"] = max(ended.values()) - max(on_time, default=stopped_at)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.speculation")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.workers} workers x {args.slots} slots, {args.tasks} x sleep({args.seconds}) "
          "after a warm round\n")
    print("| scenario | speculative | ended after the stop (s) | last call behind the others "
          "(s) | copies started | calls run twice | wall (s) | runs: median / p90 / p99 / max "
          "(s) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "ws").mkdir()
        (root / "ws" / "main.py").write_text(SCRIPT)
        for stop in (True, False):
            for mode in ("speculative", "plain"):
                for _ in range(args.rounds):
                    workers = start_workers(root, args.workers, args.slots)
                    try:
                        f = one_run(root, workers, mode, args.tasks, args.seconds, stop)
                    finally:
                        for proc, _ in workers:
                            proc.terminate()
                            proc.wait(30)
                            if proc.stdout is not None:
                                proc.stdout.close()
                    print(f"| {'stopped' if stop else 'no fault'} | {mode == 'speculative'} | "
                          f"{f.get('after_stop', float('nan')):.2f} | "
                          f"{f.get('behind', float('nan')):.2f} | {f['copies']:.0f} | "
                          f"{f['twice']:.0f} | "
                          f"{f['wall']:.2f} | {f['median']:.3f} / {f['p90']:.3f} / "
                          f"{f['p99']:.3f} / {f['max']:.3f} |", flush=True)


if __name__ == "__main__":
    main()

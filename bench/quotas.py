"""Two and three Mains sharing one worker, as its owner's quotas and priorities say.

    bench/.venv/bin/python -m bench.quotas [--slots 6] [--seconds 0.2] [--tasks 240]

A worker daemon with ``--slots`` slots and keys; its authorized-keys file gives each Main a
quota (``slots=N``) or a priority (``priority=P``). The Mains start a few seconds apart, each
submitting ``--tasks`` x sleep(``--seconds``), and every task logs when it ran. Reported per
scenario: the slots each Main held on average in each second (its share over time), and what
the configuration gives it while all of them want more (the weighted max-min fair share).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from distrib import distributed, gather

    @distributed
    def nap(seconds, log):
        start = time.time()
        time.sleep(seconds)
        with open(log, "a") as f:
            f.write(f"{os.environ['MAIN']} {start} {time.time()}\\n")

    if __name__ == "__main__":
        n, seconds, log = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
        gather([nap(seconds, log) for _ in range(n)], timeout=3600)
    """)

# (name, authorized-keys settings, seconds after the first Main that it starts)
SCENARIOS: dict[str, list[tuple[str, str, float]]] = {
    "two Mains, priority 2 and 1": [("A", "priority=2", 0.0), ("B", "", 3.0)],
    "three Mains, one with slots=1": [("A", "slots=1", 0.0), ("B", "", 2.0), ("C", "", 4.0)],
    "three Mains, priority 3, 2 and 1": [("A", "priority=3", 0.0), ("B", "priority=2", 2.0),
                                          ("C", "", 4.0)],
}


def fair_shares(slots: int, mains: list[tuple[str, str, float]]) -> dict[str, float]:
    """Weighted max-min fair shares of ``slots`` between Mains that all want more."""
    limit = {n: float(s.split("=")[1]) for n, s, _ in mains if s.startswith("slots=")}
    weight = {n: float(s.split("=")[1]) if s.startswith("priority=") else 1.0
              for n, s, _ in mains}
    share: dict[str, float] = {}
    left, open_ = float(slots), [n for n, _, _ in mains]
    while open_:
        total = sum(weight[n] for n in open_)
        capped = [n for n in open_ if n in limit and limit[n] <= left * weight[n] / total]
        if not capped:
            for n in open_:
                share[n] = left * weight[n] / total
            break
        for n in capped:
            share[n] = limit[n]
            left -= limit[n]
            open_.remove(n)
    return share


def keygen(path: Path) -> str:
    subprocess.run([sys.executable, "-m", "distrib", "keygen", str(path)], check=True,
                   capture_output=True)
    return path.with_name(path.name + ".pub").read_text().split()[0]


def scenario(root: Path, slots: int, seconds: float, tasks: int,
             mains: list[tuple[str, str, float]]) -> str:
    keygen(root / "worker.key")
    lines = [f"{keygen(root / f'{name}.key')} {name} {settings}\n" for name, settings, _ in mains]
    (root / "authorized").write_text("".join(lines))
    worker = subprocess.Popen(
        [sys.executable, "-m", "distrib", "worker", "--listen", "127.0.0.1:0", "--threads",
         str(slots), "--cache-dir", str(root / "cache"), "--key", str(root / "worker.key"),
         "--authorized-keys", str(root / "authorized")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    log = root / "runs.log"
    try:
        assert worker.stdout is not None
        ready = worker.stdout.readline().split()
        address, public = ready[ready.index("on") + 1], ready[-1]
        (root / "ws").mkdir()
        (root / "ws" / "main.py").write_text(SCRIPT)
        env = {**os.environ, "DISTRIB_WORKERS": f"{address} {public}",
               "DISTRIB_CACHE_DIR": str(root / "main-cache")}
        warm = subprocess.run([sys.executable, "main.py", "2", "0", str(root / "warm.log")],
                              cwd=root / "ws", capture_output=True, text=True,
                              env={**env, "MAIN": "warm",
                                   "DISTRIB_KEY": str(root / f"{mains[0][0]}.key")})
        if warm.returncode != 0:
            raise RuntimeError(f"a Main failed:\n{warm.stderr[-3000:]}")
        procs: list[subprocess.Popen[str]] = []
        t0 = time.time()
        for name, _, delay in mains:
            time.sleep(max(0.0, t0 + delay - time.time()))  # (the scenario's staggered starts)
            procs.append(subprocess.Popen(
                [sys.executable, "main.py", str(tasks), str(seconds), str(log)],
                cwd=root / "ws", text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env={**env, "MAIN": name, "DISTRIB_KEY": str(root / f"{name}.key")}))
        for proc in procs:
            _, err = proc.communicate(timeout=3600)
            if proc.returncode != 0:
                raise RuntimeError(f"a Main failed:\n{err[-3000:]}")
    finally:
        worker.terminate()
        worker.wait(30)
    return report(log, t0, slots, mains)


def report(log: Path, t0: float, slots: int, mains: list[tuple[str, str, float]]) -> str:
    runs = [(who, float(s) - t0, float(e) - t0)
            for who, s, e in (line.split() for line in log.read_text().splitlines())]
    names = [n for n, _, _ in mains]
    end = max(e for _, _, e in runs)
    out = ["| second | " + " | ".join(f"{n} ({s or 'priority=1'})" for n, s, _ in mains) + " |",
           "| ---: |" + " ---: |" * len(names)]
    for second in range(int(end) + 1):
        held = dict.fromkeys(names, 0.0)
        for who, s, e in runs:
            held[who] += max(0.0, min(e, second + 1) - max(s, second))
        out.append(f"| {second}-{second + 1} | " + " | ".join(f"{held[n]:.1f}" for n in names)
                   + " |")
    # While every Main still had tasks: from the last start to the first Main's last task.
    busy_from = max(min(s for who, s, _ in runs if who == n) for n in names)
    busy_to = min(max(e for who, _, e in runs if who == n) for n in names)
    held = dict.fromkeys(names, 0.0)
    for who, s, e in runs:
        held[who] += max(0.0, min(e, busy_to) - max(s, busy_from))
    span = max(busy_to - busy_from, 1e-9)
    fair = fair_shares(slots, mains)
    out.append(f"| all want more ({busy_from:.1f}-{busy_to:.1f} s) | " + " | ".join(
        f"**{held[n] / span:.2f}** (fair {fair[n]:.2f})" for n in names) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quotas")
    parser.add_argument("--slots", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=0.2)
    parser.add_argument("--tasks", type=int, default=240)
    args = parser.parse_args()
    for title, mains in SCENARIOS.items():
        with tempfile.TemporaryDirectory() as tmp:
            table = scenario(Path(tmp), args.slots, args.seconds, args.tasks, mains)
        print(f"### {title} on {args.slots} slots; each Main: {args.tasks} x "
              f"sleep({args.seconds}), slots held per second\n\n{table}\n", flush=True)


if __name__ == "__main__":
    main()

"""Two Mains on one worker, distrib alone (the peers have no fair share between clients).

    bench/.venv/bin/python -m bench.sharing [--slots 4] [--first 1500] [--second 40]

A worker daemon with ``--slots`` slots; Main A (one workspace) submits ``--first`` x sleep(0.1)
and keeps it busy; Main B (another workspace, another environment) then runs ``--second`` x
sleep(0.1). Reports B's wall time alone and while A runs, and their ratio: with a fair share
(half the slots) it is about 2, where B waiting for A's queue would be far more.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import sys, time
    from distrib import distributed, gather

    @distributed
    def nap(seconds):
        time.sleep(seconds)
        return seconds

    if __name__ == "__main__":
        n = int(sys.argv[1])
        t0 = time.perf_counter()
        gather([nap(0.1) for _ in range(n)], timeout=3600)
        print("ELAPSED", time.perf_counter() - t0, flush=True)
    """)


def run_main(folder: Path, env: dict[str, str], count: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "main.py", str(count)], cwd=folder, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def elapsed(proc: subprocess.Popen[str]) -> float:
    out, err = proc.communicate(timeout=3600)
    match = re.search(r"ELAPSED (\S+)", out)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"a Main failed:\n{err[-3000:]}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sharing")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--first", type=int, default=1500)
    parser.add_argument("--second", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("a", "b"):
            (root / name).mkdir()
            (root / name / "main.py").write_text(SCRIPT + f"# workspace {name}\n")
        worker = subprocess.Popen(
            [sys.executable, "-m", "distrib", "worker", "--listen", "127.0.0.1:0", "--threads",
             str(args.slots), "--cache-dir", str(root / "cache")],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert worker.stdout is not None
            address = re.search(r"ready on (\S+)", worker.stdout.readline())
            if address is None:
                raise RuntimeError("the worker did not start")
            env = {**os.environ, "DISTRIB_WORKERS": address.group(1),
                   "DISTRIB_CACHE_DIR": str(root / "main-cache")}
            elapsed(run_main(root / "b", env, 4))  # warm: B's environment is built once
            alone = elapsed(run_main(root / "b", env, args.second))
            first = run_main(root / "a", env, args.first)
            time.sleep(2.0)  # A has filled the worker
            shared = elapsed(run_main(root / "b", env, args.second))
            first.kill()
            first.communicate()
        finally:
            worker.terminate()
            worker.wait(30)
    print(f"| {args.slots} slots; B runs {args.second} x sleep(0.1) | wall time |")
    print("| --- | ---: |")
    print(f"| B alone | {alone:.2f} s |")
    print(f"| B while A ({args.first} x sleep(0.1)) fills the worker | {shared:.2f} s |")
    print(f"| ratio (target at most 2.5) | {shared / alone:.2f} |")


if __name__ == "__main__":
    main()

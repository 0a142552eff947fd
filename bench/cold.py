"""W5's fresh process, written as a user's script would be: start a 2-slot cluster, make one
call, stop, and say how long the start and the call took.

It imports only the framework's adapter, so that the time is the framework's and not the
harness's (``bench.workloads`` alone imports psutil, dataclasses and statistics: about 30 ms).
The task is defined here, in the main script, as a user's would be.

    python -m bench.cold FRAMEWORK
"""

from __future__ import annotations

import sys
import time

from bench.frameworks import load

FIRST_CALL_TAG = "FIRST-CALL "


def inc(x: int) -> int:
    return x + 1


def main(name: str) -> None:
    fw = load(name)
    t0 = time.perf_counter()
    fw.start(2)
    try:
        got = fw.result(fw.submit(inc, 1))
        if got != 2:
            raise RuntimeError(f"inc(1) gave {got!r}")
        print(f"{FIRST_CALL_TAG}{time.perf_counter() - t0:.6f}", flush=True)
    finally:
        fw.stop()


if __name__ == "__main__":
    main(sys.argv[1])

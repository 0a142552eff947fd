"""The seed example: the only change from a plain script is the import line.

Knobs for a quick demo: DEMO_COUNT calls (default 100) of DEMO_SLEEP seconds (default 0.05).
"""

import os
from time import sleep

from distrib import distributed

COUNT = int(os.environ.get("DEMO_COUNT", "100"))
SLEEP = float(os.environ.get("DEMO_SLEEP", "0.05"))


@distributed(platform="*", threads=1)
def sleep_sum(a: int, b: int) -> int:
    sleep(SLEEP)
    return a + b


if __name__ == "__main__":
    responses = [sleep_sum(x, x + 1) for x in range(COUNT)]
    print([r.unwrap() for r in responses])

"""The seed example: the only change from a plain script is the import line.

Knobs for a quick demo: DEMO_COUNT calls (default 10000) of DEMO_SLEEP seconds (default 1).
"""

import os
from time import sleep

from distrib import distributed

COUNT = int(os.environ.get("DEMO_COUNT", "10000"))
SLEEP = float(os.environ.get("DEMO_SLEEP", "1"))


@distributed(platform="*", threads=1)
def sleep_sum(a: int, b: int) -> int:
    sleep(SLEEP)
    return a + b


if __name__ == "__main__":
    responses = [sleep_sum(x, x + 1) for x in range(COUNT)]
    print([r.unwrap() for r in responses])

"""The executor pipe on its own: CPU per small message, sent and read, over a socket pair.

A task crosses the pipe twice (its ``Run`` to the executor, its ``Done`` back), and the daemon
and the executor each pay for both ends of each. Messages go in batches of eight, as the daemon
sends them under load.

    .venv/bin/python -m bench.pipe [--messages 20000]
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import threading
import time

from distrib.wire import _pipe_messages as pm
from distrib.wire._pipe import Pipe


def _run(count: int) -> tuple[float, float]:
    """Wall and CPU µs per message, sent and read, for ``count`` messages."""
    left, right = socket.socketpair()
    sender, reader = Pipe(left), Pipe(right)
    batch = [pm.Skip(i) for i in range(8)]

    def send() -> None:
        for _ in range(count // len(batch)):
            sender.send_many(batch)

    thread = threading.Thread(target=send)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    thread.start()
    for _ in range(count // len(batch) * len(batch)):
        reader.recv()
    thread.join()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    sender.close()
    reader.close()
    return wall / count * 1e6, cpu / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    runs = [_run(args.messages) for _ in range(args.reps)]
    print(f"pipe, {args.messages:,} small messages in batches of 8, median of {args.reps}: "
          f"{statistics.median(w for w, _ in runs):.2f} µs wall, "
          f"{statistics.median(c for _, c in runs):.2f} µs CPU per message")


if __name__ == "__main__":
    main()

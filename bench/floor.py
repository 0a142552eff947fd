"""The floor of distrib's process model for W2 (call then wait), beside ProcessPoolExecutor
and distrib itself, in one run.

A call crosses the user thread, the Main's I/O thread, ZeroMQ (an I/O thread on each side of
an ``ipc://`` socket, as the embedded cluster uses), the worker daemon's loop and an executor
process on a socketpair, and comes back the same way. Here the same hops carry a pickled
``(function, x)`` and do nothing else: what any Python implementation of this model pays
before it schedules, checks or isolates anything. "no I/O thread" is the same with the user
thread on the socket itself.

    bench/.venv/bin/python -m bench.floor [--calls 5000]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import pickle
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from bench.frameworks import load
from bench.workloads import inc


def _executor(sock: socket.socket) -> None:
    while data := sock.recv(65536):
        fn, x = pickle.loads(data)
        sock.send(pickle.dumps(fn(x)))


def _daemon(endpoint: str) -> None:
    """A ROUTER and an executor on a socketpair, relaying whole messages; ends on b"q"."""
    ours, theirs = socket.socketpair()
    child = os.fork()
    if child == 0:
        ours.close()
        _executor(theirs)
        os._exit(0)
    theirs.close()
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(ours, zmq.POLLIN)
    peer = b""
    while True:
        events = dict(poller.poll())
        if router in events:
            peer, message = router.recv_multipart()
            if message == b"q":
                break
            ours.send(message)
        if ours.fileno() in events:
            router.send_multipart([peer, ours.recv(65536)])
    ours.close()
    os.waitpid(child, 0)
    router.close(0)
    ctx.term()


class Floor:
    """The bare model: this process is the Main, a forked one the daemon (with its executor)."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="distrib-floor-")
        endpoint = f"ipc://{self.folder}/daemon.sock"
        self.pid = os.fork()
        if self.pid == 0:
            try:
                _daemon(endpoint)
            finally:
                os._exit(0)
        self.ctx = zmq.Context()
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.connect(endpoint)
        self.queue: collections.deque[bytes] = collections.deque()
        self.wake_r, self.wake_w = socket.socketpair()
        self.results: collections.deque[Any] = collections.deque()
        self.ready = threading.Condition()
        self.io: threading.Thread | None = None

    def direct(self, x: int) -> Any:
        """The user thread on the socket."""
        self.dealer.send(pickle.dumps((inc, x)))
        return pickle.loads(self.dealer.recv())

    def via_io_thread(self, x: int) -> Any:
        """The user thread queues and wakes the I/O thread, and waits to be woken."""
        if self.io is None:
            self.io = threading.Thread(target=self._io, daemon=True)
            self.io.start()
        self.queue.append(pickle.dumps((inc, x)))
        self.wake_w.send(b"x")
        with self.ready:
            while not self.results:
                self.ready.wait()
            return self.results.popleft()

    def _io(self) -> None:
        poller = zmq.Poller()
        poller.register(self.dealer, zmq.POLLIN)
        poller.register(self.wake_r, zmq.POLLIN)
        while True:
            events = dict(poller.poll())
            if self.wake_r.fileno() in events:
                if not self.wake_r.recv(4096):
                    return
                while self.queue:
                    self.dealer.send(self.queue.popleft())
            if self.dealer in events:
                while True:
                    try:
                        reply = self.dealer.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    with self.ready:
                        self.results.append(pickle.loads(reply))
                        self.ready.notify()

    def close(self) -> None:
        if self.io is not None:  # (the I/O thread owns the socket now: let it say q)
            self.queue.append(b"q")
            self.wake_w.send(b"x")
            self.wake_w.close()  # (then it sees the end and returns)
            self.io.join(10)
        else:
            self.dealer.send(b"q")
        os.waitpid(self.pid, 0)
        self.dealer.close(0)
        self.ctx.term()
        shutil.rmtree(self.folder, ignore_errors=True)


def _median_us(call: Callable[[int], Any], calls: int) -> float:
    for i in range(200):  # (warm: the first calls pay imports and connection set-up)
        assert call(i) == i + 1
    samples = []
    for i in range(calls):
        t0 = time.perf_counter()
        result = call(i)
        samples.append(time.perf_counter() - t0)
        assert result == i + 1
    return statistics.median(samples) * 1e6


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    calls = parser.parse_args(argv).calls
    rows: list[tuple[str, float]] = []
    fw = load("distrib")  # (as W2 runs it)
    fw.start(2)
    try:
        rows.append(("distrib, embedded cluster of 2 slots", _median_us(
            lambda x: fw.result(fw.submit(inc, x)), calls)))
    finally:
        fw.stop()
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        rows.append(("ProcessPoolExecutor (2 workers)", _median_us(
            lambda x: pool.submit(inc, x).result(), calls)))
    for label, way in (("the model's floor: the same hops, no work", Floor.via_io_thread),
                       ("the model's floor without the Main's I/O thread", Floor.direct)):
        floor = Floor()
        try:
            rows.append((label, _median_us(lambda x: way(floor, x), calls)))
        finally:
            floor.close()
    print(f"W2-style round trips, median of {calls:,} (µs), nproc {os.cpu_count()}, "
          f"Python {sys.version.split()[0]}\n")
    print("| round trip | median µs |\n| --- | ---: |")
    for label, value in sorted(rows, key=lambda row: -row[1]):
        print(f"| {label} | {value:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

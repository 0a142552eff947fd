"""Slots kept busy across a slow link: W3-style sleeps through a TCP proxy that delays every
byte (this kernel has no netem), so the Main and its worker are a round trip apart.

    .venv/bin/python -m bench.latency [--rtt 0.05] [--slots 4] [--calls 40] [--seconds 1.0]

Starts a worker daemon on loopback (``--slots`` slots), a proxy in front of it adding half of
``--rtt`` each way, and a Main (a script in a folder of its own) whose only worker is the
proxy's address. After a warm-up round (executors started, the workspace shipped), it times
``--calls`` x sleep(``--seconds``); efficiency = ideal / elapsed, ideal = calls x seconds /
slots. Prints one Markdown row.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

SCRIPT = """
    import sys, time
    import distrib
    from distrib import distributed

    @distributed
    def sleep(seconds):
        time.sleep(seconds)
        return seconds

    if __name__ == "__main__":
        calls, seconds, slots = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
        distrib.gather([sleep(0.01) for _ in range(2 * slots)])  # (warm-up)
        t0 = time.perf_counter()
        distrib.gather([sleep(seconds) for _ in range(calls)])
        elapsed = time.perf_counter() - t0
        print("ELAPSED", elapsed, calls * seconds / slots / elapsed)
"""


class DelayProxy:
    """A TCP proxy holding every byte back ``delay`` seconds, each way."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            for src, dst in ((client, upstream), (upstream, client)):
                pending: queue.Queue[tuple[float, bytes]] = queue.Queue()
                threading.Thread(target=self._read, args=(src, pending), daemon=True).start()
                threading.Thread(target=self._write, args=(dst, pending), daemon=True).start()

    def _read(self, src: socket.socket, pending: queue.Queue[tuple[float, bytes]]) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            pending.put((time.monotonic() + self.delay, data))
            if not data:
                return

    def _write(self, dst: socket.socket, pending: queue.Queue[tuple[float, bytes]]) -> None:
        while True:
            due, data = pending.get()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt", type=float, default=0.05)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="distrib-bench-latency-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, "TMPDIR": tmp, "DISTRIB_CACHE_DIR": str(folder / "cache")}
        worker = subprocess.Popen(
            [sys.executable, "-m", "distrib", "worker", "--listen", "127.0.0.1:0", "--threads",
             str(args.slots), "--cache-dir", str(folder / "worker-cache")],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            assert worker.stdout is not None
            match = re.search(r"ready on tcp://(\S+):(\d+)", worker.stdout.readline())
            assert match, "the worker did not start"
            proxy = DelayProxy((match.group(1), int(match.group(2))), args.rtt / 2)
            (folder / "main").mkdir()
            (folder / "main" / "main.py").write_text(textwrap.dedent(SCRIPT))
            out = subprocess.run(
                [sys.executable, "main.py", str(args.calls), str(args.seconds), str(args.slots)],
                cwd=folder / "main", env={**env, "DISTRIB_WORKERS": proxy.address},
                capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                sys.exit(out.stderr)
            _, elapsed, efficiency = out.stdout.split()
            print("| round trip | slots | calls | task | elapsed | efficiency |")
            print("| --- | --- | --- | --- | --- | --- |")
            print(f"| {args.rtt * 1000:.0f} ms | {args.slots} | {args.calls} | "
                  f"{args.seconds} s | {float(elapsed):.2f} s | {float(efficiency):.3f} |")
        finally:
            worker.terminate()
            worker.wait(30)


if __name__ == "__main__":
    main()

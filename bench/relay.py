"""Relay throughput: 80 MB arrays over a direct CURVE link and through a relay, side by side.

    .venv/bin/python -m bench.relay [--mb 80] [--reps 5]

A worker-like process binds a ROUTER (the CURVE server) on loopback and answers each array
with a short acknowledgement. The Main-like side (this process) sends ``--reps`` pickled numpy
arrays of ``--mb`` MB (protocol 5, the buffer a frame of its own, as distrib sends them) over a
DEALER (the CURVE client): first connected to the ROUTER directly, then through a
``distrib relay`` process, each side with its party (``distrib.wire._relayed``) in its own
process. Prints a Markdown table: median seconds per array, MB/s, and relayed / direct.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from distrib.wire import _keys, _transport
from distrib.wire._relayed import RelayParty


def serve(relay: str | None, relay_key: str | None) -> None:
    """The worker-like side: a ROUTER that acknowledges each array (exposed through a relay
    when ``relay`` is given); runs until its stdin closes."""
    key = _keys.load_secret(Path(os.environ["BENCH_KEY_FILE"]))
    ctx: zmq.Context[Any] = zmq.Context()
    router, address = _transport.router(ctx, "tcp://127.0.0.1:0", key)
    party = None
    if relay is not None and relay_key is not None:
        party = RelayParty(relay, relay_key, key).start()
        party.expose(address)
        while not party.registered:
            time.sleep(0.02)
    print(f"READY {address}", flush=True)
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(sys.stdin, zmq.POLLIN)
    while True:
        ready = dict(poller.poll())
        if sys.stdin.fileno() in ready or sys.stdin in ready:
            break
        frames = router.recv_multipart(copy=False)
        router.send_multipart([frames[0], str(sum(len(f) for f in frames[1:])).encode()])
    if party is not None:
        party.close()
    router.close(0)
    ctx.term()


def send_arrays(dealer: zmq.Socket[Any], array: np.ndarray[Any, Any], reps: int) -> list[float]:
    times = []
    for _ in range(reps + 1):  # (the first warms the link up and is not counted)
        started = time.perf_counter()
        buffers: list[pickle.PickleBuffer] = []
        head = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)
        dealer.send_multipart([head, *(b.raw() for b in buffers)], copy=False)
        answer = dealer.recv()
        times.append(time.perf_counter() - started)
        assert int(answer) >= array.nbytes
    return times[1:]


def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=80)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--relay", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--relay-key", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.relay, args.relay_key)
        return
    array = np.random.default_rng(0).random(args.mb * 1_000_000 // 8)
    main_key, worker_key = _keys.generate(), _keys.generate()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _keys.write(folder / "worker.key", worker_key)
        _keys.write(folder / "relay.key", _keys.generate())
        (folder / "parties").write_text(f"{main_key.public}\n{worker_key.public}\n")
        env = {**os.environ, "BENCH_KEY_FILE": str(folder / "worker.key")}
        ctx: zmq.Context[Any] = zmq.Context()
        results: dict[str, list[float]] = {}

        server, line = start(["-m", "bench.relay", "--serve"], env)
        dealer = _transport.dealer(ctx, line.split()[1], worker_key.public, main_key)
        results["direct"] = send_arrays(dealer, array, args.reps)
        dealer.close(0)
        stop(server)

        relay, line = start(["-m", "distrib", "relay", "--listen", "127.0.0.1:0", "--key",
                             str(folder / "relay.key"), "--authorized-keys",
                             str(folder / "parties")], env)
        match = re.search(r"ready on (\S+), public key (\S+)", line)
        assert match, line
        address, relay_key = match.groups()
        server, line = start(["-m", "bench.relay", "--serve", "--relay", address,
                              "--relay-key", relay_key], env)
        party = RelayParty(address, relay_key, main_key).start()
        local = party.forward(worker_key.public)
        dealer = _transport.dealer(ctx, local, worker_key.public, main_key)
        results["through a relay"] = send_arrays(dealer, array, args.reps)
        dealer.close(0)
        party.close()
        stop(server)
        relay.terminate()
        stop(relay)
        ctx.term()

    direct = statistics.median(results["direct"])
    print(f"\n{args.reps} arrays of {array.nbytes / 1e6:.0f} MB, one way (each acknowledged), "
          f"CURVE, loopback, {os.cpu_count()} cores\n")
    print("| link | median s per array | MB/s | time / direct |")
    print("| --- | --- | --- | --- |")
    for name, times in results.items():
        median = statistics.median(times)
        print(f"| {name} | {median:.3f} | {array.nbytes / 1e6 / median:,.0f} | "
              f"{median / direct:.2f}x |")


if __name__ == "__main__":
    main()

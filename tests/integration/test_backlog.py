"""A Main that stops reading its connection, while it still says it is alive, may neither fill
the worker's memory with what its tasks return nor keep its slots from the other Mains; one
that only reads slowly gets all of it, in order (``worker/_backlog.py``).

The hostile Main is built from the project's own codec: a DEALER whose libzmq stops reading
the connection once one message waits in it (``RCVHWM`` 1), that submits tasks returning 1 MB
each and then sends only heartbeats."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

import distrib
from distrib import _serialize
from distrib.wire import _codec, _facts
from distrib.wire import _messages as m
from distrib.wire._carry import Carried
from distrib.wire._envspec import EnvSpec
from distrib.workspace._manifest import encode_manifest
from tests.helpers import PYTHON, Worker, Workspace, ended, finish, wait_for, with_tasks

TASKS_SENT = 400
RESULT_BYTES = 1_000_000
LOST_AFTER = 2.5  # (heartbeats every 0.25 s; a Main that reads nothing: dropped after 30 s)

STEADY = """
    import distrib
    import tasks

    if __name__ == "__main__":
        print("RESULT", distrib.gather(tasks.sleeper.map([0.05] * 20), timeout=120) == [0.05] * 20)
    """


def _filled(i: int, n: int) -> bytes:
    return bytes([i % 251]) * n


class RawMain:
    """A Main speaking the protocol by hand, its tasks' function sent by value."""

    def __init__(self, worker: Worker, name: str, forward_output: bool = False) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 1)  # (libzmq stops reading the connection)
        self.sock.connect(worker.address)
        self.carried = Carried()
        self.manifest, self.dist = encode_manifest(None, [])
        self.send(m.Hello(m.PROTOCOL_VERSION, name, name, _facts.python_version(), 1,
                          forward_output,
                          [], {}, EnvSpec(_facts.python_version()).encode(), 1 << 20, [], 0,
                          []))
        wait_for(lambda: name in worker.status()["mains"], what=f"the raw Main {name} served")

    def send(self, message: m.Message) -> None:
        self.sock.send_multipart(_codec.encode(message))

    def submit(self, count: int, size: int,
               body: str = "lambda i, n: bytes([i % 251]) * n") -> None:
        # (by value: the Main ships no workspace to find it in)
        fn = distrib.distributed(eval(body))
        specs = [m.TaskSpec(i, self.dist, 1, None, 0,
                            [bytes(f) for f in _serialize.dumps_call(fn, b"", (i, size), {})],
                            0) for i in range(count)]
        self.send(m.Submit(specs))
        while not isinstance(self.receive(), m.NeedManifest):  # (answered by ``receive``)
            pass

    def receive(self, timeout: float = 60.0) -> m.Message:
        """The next whole message (answering a request for the manifest on the way)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sock.poll(100):
                continue
            frames = self.carried.take(self.sock.recv_multipart())
            if frames is None:
                continue
            message = _codec.decode(frames)
            if isinstance(message, m.NeedManifest):
                self.send(m.Manifest(self.dist, frames=(self.manifest,)))
            return message
        raise AssertionError(f"nothing from the worker within {timeout} s")

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def _peak_rss(pid: int) -> int:
    """The most resident memory the process ever had (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def _heartbeats_until(main: RawMain, done: Any, timeout: float, what: str) -> None:
    """Say the raw Main is alive (and read nothing) until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        main.send(m.Heartbeat())
        time.sleep(0.1)  # (a heartbeat's interval, not a wait for a condition)


def test_a_main_that_stops_reading_fills_neither_the_worker_nor_its_slots(
        start_worker: Any, workspace: Workspace) -> None:
    worker = start_worker(threads=2, extra=("--lost-after", str(LOST_AFTER), "--heartbeat",
                                            "0.25"))
    with_tasks(workspace)
    workspace.write("steady.py", STEADY)
    hostile = RawMain(worker, "hostile")
    try:
        before = psutil.Process(worker.proc.pid).memory_info().rss
        hostile.submit(TASKS_SENT, RESULT_BYTES)
        _heartbeats_until(hostile, lambda: "does not take what this worker sends" in worker.log(),
                          120, "the worker saw the raw Main stop reading")
        served = {x["name"]: x for x in worker.status()["served"]}
        assert served["hostile"]["unsent"] > 0, served
        steady = subprocess.Popen([PYTHON, "steady.py"], cwd=workspace.root, text=True,
                                  env={**os.environ, "DISTRIB_WORKERS": worker.address,
                                       "DISTRIB_HEARTBEAT": "0.25",
                                       "DISTRIB_CACHE_DIR": str(workspace.cache_dir)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with ended(steady):
            # (it keeps saying it is alive: only what it does not read drops it)
            _heartbeats_until(hostile, lambda: steady.poll() is not None
                              and "took nothing this worker sent it" in worker.log(),
                              180, "the other Main's calls and the raw Main dropped")
            out, err = finish(steady)
        assert out.splitlines() == ["RESULT True"], err[-3000:]
        grown = _peak_rss(worker.proc.pid) - before
        # (its results, 400 MB, queued in the worker before; now what the socket keeps for
        # it, about 32 of them, what waits here, 4 MB, and those of its running tasks)
        assert grown < 150 * 2**20, f"the worker grew by {grown / 2**20:.0f} MiB"
        assert f"took nothing this worker sent it for {12 * LOST_AFTER:.0f} s" in worker.log()
        assert worker.status()["state"] == "serving"
    finally:
        hostile.close()


# (prints all along: a task running while its Main does not read prints then too)
PRINTS = ("lambda i, n: ([(__import__('time').sleep(0.01), print('p' * 100, flush=True)) "
          "for _ in range(10)], bytes([i % 251]) * n)[1]")
LATE = 80


def test_a_main_that_reads_late_gets_every_result_in_order_and_hears_what_output_went(
        start_worker: Any) -> None:
    worker = start_worker(threads=2, extra=("--lost-after", "60"))
    main = RawMain(worker, "late", forward_output=True)
    try:
        main.submit(LATE, RESULT_BYTES, PRINTS)
        _heartbeats_until(main, lambda: "does not take what this worker sends" in worker.log(),
                          120, "the worker saw the raw Main stop reading")
        # (its tasks that ran meanwhile printed; none starts until it reads)
        _heartbeats_until(main, lambda: {x["name"]: x for x in worker.status()["served"]}[
            "late"]["held"] == 0, 120, "the raw Main's running tasks ended")
        got: dict[int, bytes] = {}
        printed: list[str] = []
        deadline = time.monotonic() + 120
        # (the note on what output went comes once all that waited went: after the results)
        while len(got) < LATE or not any("dropped" in text for text in printed):
            assert time.monotonic() < deadline, f"{len(got)} of {LATE} results, and the " \
                "note on the output dropped, within 120 s"
            message = main.receive()
            if isinstance(message, m.Results):
                for spec, frames in _join(message):
                    assert spec.status is m.Outcome.OK, spec.info
                    got[spec.task_id] = _serialize.loads(frames)
            elif isinstance(message, m.Output):
                printed.append(message.text)
        assert all(got[i] == _filled(i, RESULT_BYTES) for i in range(LATE))
        notes = [text for text in printed if "dropped" in text]
        assert all(re.search(r"worker w0 dropped [\d,]+ characters of this task's output: its "
                             r"Main did not read", note) for note in notes), notes
        assert "p" * 100 + "\n" in printed  # (before it stopped reading, and after)
        wait_for(lambda: "takes this worker's messages again" in worker.log(),
                 what="the worker saying the Main reads again")
    finally:
        main.close()


def _join(message: m.Results) -> list[tuple[m.ResultSpec, list[Any]]]:
    from distrib.wire._payload import join_payloads

    return list(join_payloads(message.results, message.frames))


@pytest.fixture(autouse=True)
def _only_linux() -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("reads the worker's peak memory from /proc")


class SlowLink:
    """A TCP proxy passing at most ``rate`` bytes a second from the worker to the Main, and
    reading from the worker only as fast as it passes on (a slow link: the worker's socket
    fills), the other way at once."""

    def __init__(self, target: str, rate: float) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self.target, self.rate = (host, int(port)), rate
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.server.getsockname()[1]
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
                upstream = socket.socket()
                # (a small window: what the kernel keeps for the slow side stays small)
                upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
                upstream.connect(self.target)
            except OSError:
                return
            self._sockets += [client, upstream]
            for src, dst, rate in ((client, upstream, 0.0), (upstream, client, self.rate)):
                threading.Thread(target=self._copy, args=(src, dst, rate), daemon=True).start()

    def _copy(self, src: socket.socket, dst: socket.socket, rate: float) -> None:
        while not self._stop.is_set():
            try:
                data = src.recv(16 << 10)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return
            if rate:  # (the link's bandwidth: what follows waits its turn)
                self._stop.wait(len(data) / rate)

    def close(self) -> None:
        self._stop.set()
        for sock in self._sockets:
            sock.close()


SLOW = """
    import distrib

    @distrib.distributed
    def chunk(i):
        return bytes([i]) * 30_000_000

    if __name__ == "__main__":
        got = distrib.gather([chunk(i) for i in range(2)], timeout=300)
        print("RESULT", all(g == bytes([i]) * 30_000_000 for i, g in enumerate(got)))
    """


def test_a_main_on_a_slow_link_gets_its_large_results_and_is_not_dropped(
        start_worker: Any, workspace: Workspace) -> None:
    # (the worker in a mount namespace of its own: its /dev/shm is not the Main's, so the
    # results travel on the connection)
    worker = start_worker(threads=2, extra=("--lost-after", str(LOST_AFTER)), prefix=(
        "unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs /dev/shm && exec "$@"', "sh"))
    # Two results of 30 MB at 4 MB/s, more than the worker's socket and the kernel hold:
    # libzmq tells the worker what was read every 16 pieces of a MiB, 4 s apart, longer than
    # lost_after
    link = SlowLink(worker.address, 4 << 20)
    try:
        workspace.write("slow.py", SLOW)
        out = subprocess.run([PYTHON, "slow.py"], cwd=workspace.root, text=True,
                             env={**os.environ, "DISTRIB_WORKERS": link.address,
                                  "DISTRIB_CACHE_DIR": str(workspace.cache_dir)},
                             capture_output=True, timeout=300)
        assert out.stdout.splitlines() == ["RESULT True"], out.stderr[-3000:]
        log = worker.log()
        assert "does not take what this worker sends" in log  # (its results waited)
        assert "took nothing this worker sent it" not in log
    finally:
        link.close()

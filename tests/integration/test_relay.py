"""The relay (``distrib relay``) as a process of its own, with parties on both sides: a ZeroMQ
CURVE client and server, made with the project's keys, talk end to end through it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

from distrib.wire import _keys, _transport
from distrib.wire import _relay_messages as rm
from distrib.wire._keys import KeyPair
from distrib.wire._relayed import RelayParty
from tests.helpers import PYTHON, START_TIMEOUT, stop_process, wait_for


@dataclass
class Relay:
    proc: subprocess.Popen[str]
    address: str
    public_key: str
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text()


@pytest.fixture
def relay_keys(tmp_path: Path) -> tuple[Path, Path, KeyPair, KeyPair]:
    """The relay's key file, its authorized-keys file, and two authorized parties' keys."""
    key_file = tmp_path / "relay.key"
    _keys.write(key_file, _keys.generate())
    main, worker = _keys.generate(), _keys.generate()
    authorized = tmp_path / "parties.authorized"
    authorized.write_text(f"{main.public} main\n{worker.public} worker\n")
    return key_file, authorized, main, worker


@pytest.fixture
def start_relay(tmp_path: Path,
                relay_keys: tuple[Path, Path, KeyPair, KeyPair]) -> Iterator[Callable[..., Relay]]:
    started: list[Relay] = []

    def start(listen: str = "127.0.0.1:0", extra: tuple[str, ...] = ()) -> Relay:
        log_file = tmp_path / f"relay-{len(started)}.log"
        with open(log_file, "w") as log:
            proc = subprocess.Popen(
                [PYTHON, "-m", "distrib", "relay", "--listen", listen, "--key",
                 str(relay_keys[0]), "--authorized-keys", str(relay_keys[1]), "-v", *extra],
                stdout=subprocess.PIPE, stderr=log, text=True, cwd=tmp_path,
                env={**os.environ, "TMPDIR": str(tmp_path)})  # (what a killed relay leaves)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"ready on (\S+), public key (\S+)", line)
        if not match:
            stop_process(proc)
            raise AssertionError(f"relay did not start: {line!r} {log_file.read_text()}")
        relay = Relay(proc, match.group(1), match.group(2), log_file)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        stop_process(relay.proc)
        assert relay.proc.stdout is not None
        relay.proc.stdout.close()


@pytest.fixture
def parties() -> Iterator[Callable[[str, str, KeyPair], RelayParty]]:
    made: list[RelayParty] = []

    def make(relay: str, relay_key: str, key: KeyPair) -> RelayParty:
        party = RelayParty(relay, relay_key, key).start()
        made.append(party)
        return party

    yield make
    for party in made:
        party.close()


Link = Callable[..., "tuple[zmq.Socket[Any], zmq.Socket[Any]]"]
Linked = Callable[[str, str], "tuple[RelayParty, RelayParty, zmq.Socket[Any], zmq.Socket[Any]]"]


@pytest.fixture
def linked(relay_keys: tuple[Path, Path, KeyPair, KeyPair],
           parties: Callable[[str, str, KeyPair], RelayParty], link: Link) -> Linked:
    """``linked(address, relay_key)``: a Main's and a worker's parties registered at the relay
    reached at ``address``, and a DEALER and a ROUTER linked through them (``link``)."""
    _, _, main_key, worker_key = relay_keys

    def make(address: str, relay_key: str) -> tuple[RelayParty, RelayParty, zmq.Socket[Any],
                                                    zmq.Socket[Any]]:
        worker = parties(address, relay_key, worker_key)
        main = parties(address, relay_key, main_key)
        dealer, router = link(main, worker)
        wait_for(registered(main, worker), START_TIMEOUT, "both parties registered")
        return main, worker, dealer, router

    return make


@pytest.fixture
def link() -> Iterator[Link]:
    """``link(main, worker, local=...)``: a worker-like ROUTER (the CURVE server, on
    loopback) exposed through ``worker``'s party, and a Main-like DEALER (the CURVE client)
    connected to ``main``'s party's local end at ``local``; all closed at the end."""
    ctx: zmq.Context[Any] = zmq.Context()
    made: list[zmq.Socket[Any]] = []

    def make(main: RelayParty, worker: RelayParty, local: str = "tcp://127.0.0.1:0"
             ) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        router, address = _transport.router(ctx, "tcp://127.0.0.1:0", worker.key)
        worker.expose(address)
        local = main.forward(worker.key.public, local)
        dealer = _transport.dealer(ctx, local, server_key=worker.key.public, key=main.key)
        made.extend((dealer, router))
        return dealer, router

    yield make
    for sock in made:
        sock.close(0)
    ctx.term()


def echo(dealer: zmq.Socket[Any], router: zmq.Socket[Any], payload: bytes,
         timeout: float = 60.0) -> None:
    """Send ``payload`` from the DEALER; the ROUTER sends it back; check it came back whole."""
    dealer.send(payload, copy=False)
    assert router.poll(int(timeout * 1000)), "the message did not reach the server"
    peer, got = router.recv_multipart(copy=False)
    assert got.bytes == payload
    router.send_multipart([peer, got], copy=False)
    assert dealer.poll(int(timeout * 1000)), "the answer did not come back"
    assert dealer.recv(copy=False).bytes == payload


def host_port(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def registered(*parties: RelayParty) -> Callable[[], bool]:
    return lambda: all(p.registered for p in parties)


def test_a_curve_session_runs_end_to_end_through_the_relay(
        start_relay: Callable[..., Relay], relay_keys: tuple[Path, Path, KeyPair, KeyPair],
        linked: Linked) -> None:
    relay = start_relay()
    _, _, main_key, worker_key = relay_keys
    _, _, dealer, router = linked(relay.address, relay.public_key)
    for size in (10, 100_000):
        echo(dealer, router, os.urandom(size))
    echo(dealer, router, os.urandom(80 << 20), timeout=120)
    assert dealer.getsockopt(zmq.MECHANISM) == zmq.CURVE
    log = relay.log()
    assert f"party {main_key.public} registered" in log
    assert f"spliced {main_key.public} -> {worker_key.public}" in log


class Recorder:
    """A TCP proxy in front of the relay that keeps every byte it carries, both ways."""

    def __init__(self, target: str) -> None:
        self.target = host_port(target)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.chunks: list[bytes] = []
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                thread = threading.Thread(target=self._copy, args=(a, b), daemon=True)
                self.threads.append(thread)
                thread.start()

    def _copy(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(1 << 20):
                with self.lock:
                    self.chunks.append(data)
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def captured(self) -> bytes:
        with self.lock:
            return b"".join(self.chunks)

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # (wakes the accept)
        except OSError:
            pass
        self.listener.close()
        for s in list(self.sockets):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self.threads:
            thread.join(10)
        for s in self.sockets:
            s.close()


def test_the_relay_sees_no_plaintext_of_what_it_carries(
        start_relay: Callable[..., Relay], linked: Linked) -> None:
    relay = start_relay()
    recorder = Recorder(relay.address)
    try:
        # Both parties reach the relay only through the recorder: it holds all the relay saw.
        _, _, dealer, router = linked(recorder.address, relay.public_key)
        marker = b"MARKER-e2e-7f3a9c-" * 64
        echo(dealer, router, marker + os.urandom(1 << 20) + marker)
        captured = recorder.captured()
        assert len(captured) > 2 << 20  # (the payload went through, both ways)
        assert b"MARKER-e2e-7f3a9c-" not in captured
    finally:
        recorder.close()


def test_an_unauthorized_party_is_refused_and_logged_with_its_key(
        start_relay: Callable[..., Relay], relay_keys: tuple[Path, Path, KeyPair, KeyPair],
        parties: Callable[[str, str, KeyPair], RelayParty], link: Link) -> None:
    relay = start_relay()
    _, _, main_key, worker_key = relay_keys
    stranger = _keys.generate()
    worker = parties(relay.address, relay.public_key, worker_key)
    intruder = parties(relay.address, relay.public_key, stranger)
    wait_for(lambda: intruder.refused, START_TIMEOUT, "the relay refusing the stranger's key")
    wait_for(lambda: f"refused a party: key {stranger.public} is not in the authorized keys"
             in relay.log(), START_TIMEOUT, "the refusal in the relay's log")
    assert not intruder.registered
    # An authorized party asking for the stranger is told it is not there.
    wait_for(registered(worker), START_TIMEOUT, "the worker registered")
    main = parties(relay.address, relay.public_key, main_key)
    wait_for(registered(main), START_TIMEOUT, "the Main registered")
    local = main.forward(stranger.public)
    with socket.create_connection(host_port(local)) as s:
        s.settimeout(30)
        assert s.recv(1) == b""  # closed: no splice to an unregistered key
    assert stranger.public not in [line for line in relay.log().splitlines()
                                   if "spliced" in line]


def test_garbage_on_the_relay_port_does_not_stop_it_serving(
        start_relay: Callable[..., Relay], linked: Linked) -> None:
    relay = start_relay()
    target = host_port(relay.address)
    held: list[socket.socket] = []
    try:
        for first in (os.urandom(4096), b"\xff" + os.urandom(4096), rm.MAGIC + os.urandom(16),
                      b"GET / HTTP/1.1\r\n\r\n", b"DR"):
            s = socket.create_connection(target)
            s.sendall(first)
            held.append(s)
        for line in ("a connection that began with bytes neither a party nor a splice",
                     "a connection that is neither a party's control connection nor a splice "
                     "with a token the relay handed out"):
            wait_for(lambda: f"dropped {line}" in relay.log(), START_TIMEOUT, line)
        for _ in range(300):  # silent connections, more than the relay keeps unidentified
            held.append(socket.create_connection(target))
        _, _, dealer, router = linked(relay.address, relay.public_key)
        echo(dealer, router, os.urandom(1 << 20))
        assert relay.proc.poll() is None
        assert "dropped the oldest of too many connections that had not said" in relay.log()
    finally:
        for s in held:
            s.close()


def test_a_restarted_relay_gets_its_parties_back(
        start_relay: Callable[..., Relay], relay_keys: tuple[Path, Path, KeyPair, KeyPair],
        parties: Callable[[str, str, KeyPair], RelayParty], link: Link) -> None:
    first = start_relay()
    _, _, main_key, worker_key = relay_keys
    worker = parties(first.address, first.public_key, worker_key)
    main = parties(first.address, first.public_key, main_key)
    dealer, router = link(main, worker, local="ipc://")  # (a Unix socket only its user opens)
    assert dealer.getsockopt_string(zmq.LAST_ENDPOINT).startswith("ipc://")
    wait_for(registered(main, worker), START_TIMEOUT, "both parties registered")
    echo(dealer, router, b"before")
    first.proc.kill()
    first.proc.wait()
    wait_for(lambda: not main.registered and not worker.registered, 30,
             "the parties to notice the relay is gone")
    again = start_relay(listen=first.address)
    started = time.monotonic()
    wait_for(registered(main, worker), 5, "both parties registered again within 5 s")
    assert time.monotonic() - started < 5
    echo(dealer, router, b"after")  # (the ZeroMQ sockets connect again by themselves)
    assert f"party {worker_key.public} registered" in again.log()


def test_the_relay_caps_splices_and_bytes_per_second_per_key(
        start_relay: Callable[..., Relay], linked: Linked) -> None:
    relay = start_relay(extra=("--max-splices", "1", "--max-rate", "2M"))
    main, worker, dealer, router = linked(relay.address, relay.public_key)
    started = time.monotonic()
    echo(dealer, router, os.urandom(6 << 20))  # 6 MB each way at 2 MB/s, 2 MB of burst
    assert time.monotonic() - started > 1.0
    # A second connection to the same key, while the first holds its one splice:
    local = main.forward(worker.key.public)
    with socket.create_connection(host_port(local)) as s:
        s.settimeout(30)
        assert s.recv(1) == b""  # closed: over the cap
    wait_for(lambda: "is at its cap of 1 splice(s) (--max-splices)" in relay.log(),
             START_TIMEOUT, "the refusal in the relay's log")
    echo(dealer, router, b"still served")


def test_a_key_taken_out_of_the_file_loses_its_splices_and_its_registration(
        start_relay: Callable[..., Relay], relay_keys: tuple[Path, Path, KeyPair, KeyPair],
        linked: Linked) -> None:
    relay = start_relay()
    _, authorized, main_key, worker_key = relay_keys
    main, worker, dealer, router = linked(relay.address, relay.public_key)
    echo(dealer, router, b"before")
    authorized.write_text(f"{worker_key.public} worker\n")
    wait_for(lambda: f"key {main_key.public} is no longer authorized: closing its 1 splice(s)"
             in relay.log(), START_TIMEOUT, "the revoked key's splice closed")
    wait_for(lambda: main.refused, START_TIMEOUT, "the Main's party refused on its next try")
    assert not main.registered and worker.registered

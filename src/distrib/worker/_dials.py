"""Mains this worker dials (``--connect HOST:PORT --main-key KEY``): for a worker that cannot
accept connections (behind NAT, a closed firewall), it opens them.

Per target, a DEALER that is the CURVE client of the Main's listening ROUTER: it proves this
worker's key and checks the Main's (a Main with another key fails the handshake and is never
served). Once the handshake succeeds the worker says ``Dial``; the Main answers ``Hello``, and
from there on the Main is served as one that dialled this worker, under a peer id of its own
(``dial-<target>-<connection>``, a new one per connection, so nothing of an old connection
reaches a new one). A closed connection drops that Main (its tasks stop) and the socket is
built again at once; libzmq retries a refused connection after 0.1 s, doubling up to
``RETRY_MAX_MS``, so a restarted Main has its workers back within about a second of listening.
A failed handshake (this worker's key refused, the Main's unproven) is a protocol error to
libzmq, which then never tries again: the socket is built again every ``REFUSED_RETRY``
seconds, so that a key its owner adds to the Main's file (as the Main's log asks) is used.

    dialling -handshake-> connected (Dial sent; Hello, Welcome...) -closed-> dialling
        \\-key refused / Main's key unproven (logged) -REFUSED_RETRY s-> dialling
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Container
from typing import Any

import zmq
from msgspec import Struct

from distrib._logs import RateLimited
from distrib.wire import _transport
from distrib.wire import _messages as m
from distrib.wire._keys import KeyPair

log = logging.getLogger("distrib.worker")
peer_log = RateLimited(log)

RETRY_MAX_MS = 1000  # the longest wait between two tries of a Main that does not answer
FAILURE_LOG_EVERY = 60.0  # seconds: a failing handshake repeats; say it once a minute
REFUSED_RETRY = 5.0  # seconds between tries of a Main that failed the handshake
_EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)


class Target(Struct, eq=False):
    """One Main this worker dials, and its connection as it stands."""

    index: int
    address: str  # host:port, as given
    main_key: str  # the Main's public key: it must prove it
    sock: zmq.Socket[Any] | None = None
    monitor: zmq.Socket[Any] | None = None
    peer: bytes = b""  # the Main's peer id while connected ("" while dialling)
    connections: int = 0  # handshakes that succeeded
    problem: str = ""  # why the last try failed
    since: float = 0.0  # when its state last changed
    logged: float = -1e9  # when a failure was last logged


class Dials:
    """The Mains this worker dials."""

    def __init__(self, ctx: zmq.Context[Any], key: KeyPair | None,
                 targets: tuple[tuple[str, str], ...], hello: Callable[[], m.Dial],
                 on_frames: Callable[[bytes, list[Any], str], None],
                 on_closed: Callable[[bytes, str], None]) -> None:
        self.ctx = ctx
        self.key = key
        self.hello = hello  # the Dial this worker says (its name, id)
        self.on_frames = on_frames  # (peer, frames, the Main's key): a message to serve
        self.on_closed = on_closed  # (peer, why): that Main is gone
        self.targets: list[Target] = []
        self.by_peer: dict[bytes, Target] = {}
        self._by_sock: dict[Any, Target] = {}
        self._indexes = itertools.count()
        self.set_targets(targets)

    def set_targets(self, targets: tuple[tuple[str, str], ...]) -> None:
        """Dial these Mains (host:port, key): those already dialled stay as they are, the
        others are dropped (their tasks stop)."""
        kept = [t for t in self.targets if (t.address, t.main_key) in targets]
        for target in self.targets:
            if target not in kept:
                self._hang_up(target, "is no longer dialled (the policy changed)")
                self._close(target)
        self.targets = kept + [Target(next(self._indexes), a, k) for a, k in targets
                               if (a, k) not in {(t.address, t.main_key) for t in kept}]
        for target in self.targets:
            if target.sock is None:
                self._build(target)

    def _hang_up(self, target: Target, why: str) -> None:
        """Its Main is no longer served on this connection."""
        if target.peer:
            peer, target.peer = target.peer, b""
            self.by_peer.pop(peer, None)
            self.on_closed(peer, why)

    def _build(self, target: Target) -> None:
        self._close(target)
        target.sock = _transport.dealer(self.ctx, f"tcp://{target.address}", target.main_key,
                                        self.key, RETRY_MAX_MS, connect=False, bounded=True)
        # Watched before it connects: a handshake done before the monitor was attached would
        # go unseen, and the worker would never say Dial (seen once in a few dozen dials).
        target.monitor = _transport.monitor(target.sock, _EVENTS)
        target.sock.connect(f"tcp://{target.address}")
        target.since = time.monotonic()
        self._by_sock[target.sock] = self._by_sock[target.monitor] = target

    def _close(self, target: Target, linger: int = 0) -> None:
        """(``linger`` 0 where the connection is gone: what was queued for it must not go to
        the next one)"""
        for sock in (target.sock, target.monitor):
            self._by_sock.pop(sock, None)
        if target.sock is not None:
            target.sock.disable_monitor()
            target.sock.close(linger=linger)
        if target.monitor is not None:
            target.monitor.close(0)
        target.sock = target.monitor = None

    def sockets(self) -> list[zmq.Socket[Any]]:
        return list(self._by_sock)

    def on_readable(self, sock: zmq.Socket[Any]) -> None:
        target = self._by_sock.get(sock)
        if target is None:
            return
        if sock is target.monitor:
            while target.monitor is not None and self._on_event(target):
                pass
            return
        for _ in range(1000):
            if target.sock is None or not target.peer:
                return
            try:
                frames = _transport.recv_frames(target.sock)
            except zmq.Again:
                return
            self.on_frames(target.peer, frames, target.main_key)

    def _on_event(self, target: Target) -> bool:
        assert target.monitor is not None
        try:
            event = _transport.monitor_event(target.monitor, zmq.NOBLOCK)["event"]
        except zmq.Again:
            return False
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            target.connections += 1
            target.peer = f"dial-{target.index}-{target.connections}".encode()
            target.problem, target.since = "", time.monotonic()
            self.by_peer[target.peer] = target
            assert target.sock is not None
            _transport.send(target.sock, self.hello())
            log.info("dialled the Main at %s (key %s...): connected", target.address,
                     target.main_key[:8])
        elif event == zmq.EVENT_DISCONNECTED and target.peer:
            self._hang_up(target, f"closed the connection this worker opened to {target.address}")
            self._build(target)  # (a fresh socket: nothing queued for the old one goes out)
            return False
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._failed(target, f"the Main at {target.address} refused this worker's key "
                         f"{self.key.public if self.key else '(none)'}: its owner must add "
                         "this worker's .pub line to the Main's authorized_workers")
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            self._failed(target, f"the Main at {target.address} did not prove the key given "
                         f"with --main-key ({target.main_key}): not serving it (check the "
                         "key, or whether something else answers at that address)")
        return True

    def _failed(self, target: Target, problem: str) -> None:
        now = time.monotonic()
        if problem != target.problem or now - target.logged > FAILURE_LOG_EVERY:
            target.logged = now
            log.warning("%s", problem)
        target.problem, target.since = problem, now

    def tick(self, now: float, served: Container[bytes], lost_after: float) -> None:
        """Dial again where the connection is up but no Main is served on it for
        ``lost_after`` seconds (it never said Hello, or it was dropped as silent: a Main that
        forgot this worker answers only a new ``Dial``), and where the handshake failed
        ``REFUSED_RETRY`` seconds ago."""
        for target in self.targets:
            if target.peer and target.peer not in served and now - target.since > lost_after:
                log.info("the Main at %s is not served on its connection: dialling again",
                         target.address)
                self._hang_up(target, "is dialled again")
                self._build(target)
            elif not target.peer and target.problem and now - target.since > REFUSED_RETRY:
                self._build(target)
            elif target.peer in served:
                target.since = now

    def address(self, peer: bytes) -> str:
        """Where this worker dialled the Main of ``peer`` ("" if that Main dialled it)."""
        target = self.by_peer.get(peer)
        return target.address if target is not None else ""

    def status(self) -> list[dict[str, Any]]:
        """Each Main this worker dials: where, its key, and how it stands."""
        return [{"address": t.address, "main_key": t.main_key[:8],
                 "state": "connected" if t.peer else "dialling", "problem": t.problem}
                for t in self.targets]

    def close(self) -> None:
        for target in self.targets:
            self._close(target, linger=2000)  # (the last results and goodbyes still go out)

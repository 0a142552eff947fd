"""The relay daemon: one public port where authorized parties register by key and are spliced
to each other, TURN-style, without the relay seeing what they say.

    party A (Main)                      relay                         party B (worker)
     DEALER -> local port --splice-->  [front] --splice--> ROUTER <-- control, CURVE
              control (CURVE) ------>  [front] --> control ROUTER  <-- control (CURVE)
                                      pairs A's and B's splice
                                      connections by token, copies
                                      bytes both ways

Every connection to the port is told apart by its first bytes: a ZeroMQ greeting (0xFF) is a
party's control connection, spliced to the control ROUTER (``_control``: CURVE, keys checked);
``MAGIC`` and a token is a splice connection, which waits for the one that holds the token's
twin; anything else, or nothing within ``IDENTIFY_TIMEOUT``, is dropped. The relay holds its
own key only for the control connections: the parties' own CURVE session runs through their
splice end to end. Per key, at most ``max_splices`` splices at once and ``max_rate`` bytes a
second (what the key's parties send, over all their splices).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import secrets
import signal
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq.asyncio

from distrib._logs import RateLimited
from distrib.relay._control import Control
from distrib.wire import _relay_messages as rm
from distrib.wire._keys import KeyPair
from distrib.wire._splice import Rate, Splice, Waiting, keep_alive

log = logging.getLogger("distrib.relay")
peer_log = RateLimited(log)

IDENTIFY_TIMEOUT = 10.0  # seconds a new connection has to say what it is
PAIR_TIMEOUT = 10.0  # seconds a splice's first connection waits for its twin
MAX_UNIDENTIFIED = 256  # connections that have not said what they are; past it the oldest go
MAX_CONNECTIONS = 4096  # connections of all kinds (or fewer, as descriptors allow); past it
# new ones are closed at once
_HEAD = len(rm.MAGIC) + rm.TOKEN_BYTES


@dataclass(frozen=True)
class RelaySettings:
    host: str
    port: int
    key: KeyPair
    authorized: Path
    max_splices: int = 64  # per key, at once (pending ones count)
    max_rate: float | None = None  # bytes per second per key (None: no cap)


class _Pair:
    """A splice the relay handed tokens for: the requester's side (0) and the peer's (1)."""

    def __init__(self, keys: tuple[str, str], tokens: tuple[bytes, bytes]) -> None:
        self.keys, self.tokens = keys, tokens
        self.arrived: list[tuple[asyncio.Transport, bytes] | None] = [None, None]
        self.splice: Splice | None = None
        self.expiry: asyncio.TimerHandle | None = None


class Relay:
    """The daemon: ``await start()`` binds, ``await serve()`` runs until ``stop()``."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self._pending: dict[bytes, tuple[_Pair, int]] = {}  # token -> its pair and side
        self._splices: dict[str, set[_Pair]] = {}  # key -> its pairs, pending or spliced
        self._rates: dict[str, Rate] = {}
        self._unidentified: OrderedDict[_Front, None] = OrderedDict()
        self.open: set[asyncio.BaseTransport] = set()  # (closed ones pruned when at the cap)
        self.max_connections = _connection_cap()
        self.dropped = 0  # connections dropped as garbage (for the owner's log and the tests)
        self._server: asyncio.AbstractServer | None = None
        self._stopped: asyncio.Future[None] | None = None

    async def start(self) -> tuple[str, int]:
        """Bind the public port, then the control socket behind it; the address bound (port
        0 picks one)."""
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):  # (before the ready line is said)
            loop.add_signal_handler(sig, self.stop)
        self._server = await loop.create_server(lambda: _Front(self), self.settings.host,
                                                self.settings.port, backlog=1024)
        self._tmp = tempfile.TemporaryDirectory(prefix="distrib-relay-")  # (owner-only)
        self._control_path = str(Path(self._tmp.name) / "control")
        self.ctx = zmq.asyncio.Context()
        self.control = Control(self.ctx, self.settings.key, self.settings.authorized,
                               f"ipc://{self._control_path}", self._new_pair, self._revoked)
        return self.settings.host, self._server.sockets[0].getsockname()[1]

    async def serve(self) -> None:
        assert self._stopped is not None
        control = asyncio.ensure_future(self.control.run())
        try:
            await asyncio.wait([control, self._stopped], return_when=asyncio.FIRST_COMPLETED)
            if control.done():
                control.result()  # (the control side failed: say why)
        finally:
            control.cancel()
            if self._server is not None:
                self._server.close()
            for pairs in list(self._splices.values()):
                for pair in list(pairs):
                    self._end(pair)
            self.control.close()
            self.ctx.destroy(0)
            self._tmp.cleanup()

    def stop(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    # --- the front: what each new connection is ----------------------------------------------

    def _identified(self, front: _Front, head: bytes) -> None:
        """``front`` said what it is with its first bytes ``head`` (its reading is paused)."""
        self._unidentified.pop(front, None)
        transport = front.transport
        assert transport is not None
        if head[0] == 0xFF:
            asyncio.ensure_future(self._to_control(transport, head))
            return
        found = self._pending.pop(head[len(rm.MAGIC):_HEAD], None) \
            if head.startswith(rm.MAGIC) else None
        if found is None:
            self._garbage(transport, "a connection that is neither a party's control "
                          "connection nor a splice with a token the relay handed out")
            return
        pair, side = found
        pair.arrived[side] = (transport, head[_HEAD:])
        front.pair = pair
        if all(pair.arrived):
            self._join(pair)

    async def _to_control(self, transport: asyncio.Transport, head: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, inner = await loop.create_unix_connection(Waiting, self._control_path)
        except OSError as exc:
            log.warning("cannot reach the relay's control socket: %s", exc)
            transport.close()
            return
        assert inner.transport is not None
        if transport.is_closing():
            inner.transport.close()
            return
        Splice(transport, inner.transport, a_early=head)

    def _garbage(self, transport: asyncio.Transport, what: str) -> None:
        self.dropped += 1
        peer = transport.get_extra_info("peername")
        # (each kind its own line to rate-limit: a flood of one does not hide the others)
        peer_log.warning(f"dropped {what} from %s", peer[0] if peer else "?")
        transport.abort()

    def _over(self, front: _Front) -> None:
        """One more unidentified connection: past the cap, the oldest goes."""
        self._unidentified[front] = None
        if len(self._unidentified) > MAX_UNIDENTIFIED:
            oldest, _ = self._unidentified.popitem(last=False)
            if oldest.transport is not None:
                self._garbage(oldest.transport, "the oldest of too many connections that had "
                              "not said what they are")

    # --- splices -----------------------------------------------------------------------------

    def _new_pair(self, key: str, peer: str) -> tuple[bytes, bytes] | str:
        cap = self.settings.max_splices
        for who in (key, peer):
            if len(self._splices.get(who, ())) >= cap:
                peer_log.warning("refused a splice %s -> %s: key %s is at its cap of %d "
                                 "splice(s) (--max-splices)", key, peer, who, cap)
                return f"key {who} is at its cap of {cap} splice(s) at this relay"
        tokens = (secrets.token_bytes(rm.TOKEN_BYTES), secrets.token_bytes(rm.TOKEN_BYTES))
        pair = _Pair((key, peer), tokens)
        for side, token in enumerate(tokens):
            self._pending[token] = (pair, side)
        for who in (key, peer):
            self._splices.setdefault(who, set()).add(pair)
        pair.expiry = asyncio.get_running_loop().call_later(PAIR_TIMEOUT, self._expire, pair)
        return tokens

    def _expire(self, pair: _Pair) -> None:
        if pair.splice is None:
            missing = [pair.keys[i] for i in (0, 1) if pair.arrived[i] is None]
            peer_log.info("a splice %s -> %s expired: no connection came from %s",
                          *pair.keys, " and ".join(missing))
            self._end(pair)

    def _join(self, pair: _Pair) -> None:
        assert pair.arrived[0] is not None and pair.arrived[1] is not None
        if pair.expiry is not None:
            pair.expiry.cancel()
        (a, a_early), (b, b_early) = pair.arrived[0], pair.arrived[1]
        pair.splice = Splice(a, b, a_early=a_early, b_early=b_early,
                             a_rate=self._rate(pair.keys[0]), b_rate=self._rate(pair.keys[1]),
                             on_close=lambda splice: self._end(pair))
        if not pair.splice.closed:
            log.info("spliced %s -> %s", *pair.keys)

    def _rate(self, key: str) -> Rate | None:
        if self.settings.max_rate is None:
            return None
        if key not in self._rates:
            self._rates[key] = Rate(self.settings.max_rate)
        return self._rates[key]

    def _end(self, pair: _Pair) -> None:
        """Forget ``pair`` and close its connections (called again by the close: no-op)."""
        for token in pair.tokens:
            self._pending.pop(token, None)
        if pair.expiry is not None:
            pair.expiry.cancel()
        for who in pair.keys:
            pairs = self._splices.get(who)
            if pairs is not None and pair in pairs:
                pairs.discard(pair)
                if not pairs:
                    del self._splices[who]
        if pair.splice is not None:
            if not pair.splice.closed:
                pair.splice.close()
                return
            log.info("splice %s -> %s closed: %d bytes one way, %d the other", *pair.keys,
                     pair.splice.a.sent, pair.splice.b.sent)
        else:
            for arrived in pair.arrived:
                if arrived is not None:
                    arrived[0].close()

    def _revoked(self, key: str) -> None:
        pairs = self._splices.get(key, set())
        if pairs:
            log.warning("key %s is no longer authorized: closing its %d splice(s)", key,
                        len(pairs))
        for pair in list(pairs):
            self._end(pair)


class _Front(asyncio.Protocol):
    """A new connection to the public port, until its first bytes say what it is."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.pair: _Pair | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        relay = self.relay
        if len(relay.open) >= relay.max_connections:
            relay.open = {t for t in relay.open if not t.is_closing()}
            if len(relay.open) >= relay.max_connections:
                peer_log.warning("refused a connection: %d open, the most this relay keeps",
                                 relay.max_connections)
                transport.abort()
                return
        relay.open.add(transport)
        keep_alive(transport)
        relay._over(self)
        self._timer = asyncio.get_running_loop().call_later(IDENTIFY_TIMEOUT, self._late)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.head += data
        control = self.head[:1] == b"\xff"
        if not control and not rm.MAGIC.startswith(self.head[:len(rm.MAGIC)]):
            self.relay._unidentified.pop(self, None)
            self.relay._garbage(self.transport, "a connection that began with bytes neither "
                                "a party nor a splice begins with")
        elif control or len(self.head) >= _HEAD:
            self.transport.pause_reading()
            if self._timer is not None:
                self._timer.cancel()
            self.relay._identified(self, self.head)

    def _late(self) -> None:
        if self.transport is not None and self in self.relay._unidentified:
            self.relay._unidentified.pop(self, None)
            self.relay._garbage(self.transport, "a connection that said nothing for "
                                f"{IDENTIFY_TIMEOUT:.0f} s")

    def connection_lost(self, exc: Exception | None) -> None:
        # (only while this protocol is the transport's: a splice takes it over)
        if self._timer is not None:
            self._timer.cancel()
        self.relay._unidentified.pop(self, None)
        if self.pair is not None and self.pair.splice is None:
            self.relay._end(self.pair)  # (the twin, if waiting, is closed with it)

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


def _connection_cap() -> int:
    """How many connections the relay keeps: ``MAX_CONNECTIONS``, or fewer when the process
    may not open enough descriptors (a control connection takes two, one of them inside),
    after raising its own limit as far as it may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * MAX_CONNECTIONS + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        raised = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, (soft - 256) // 2))


async def run(settings: RelaySettings, ready: Callable[[str, int], None]) -> None:
    """Run a relay until SIGTERM or SIGINT; ``ready(host, port)`` once it listens."""
    relay = Relay(settings)
    host, port = await relay.start()
    ready(host, port)
    await relay.serve()

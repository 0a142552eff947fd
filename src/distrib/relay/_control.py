"""The relay's control side: who may register (the ZAP check of parties' keys against the
authorized-keys file), who is registered, and the control messages they exchange.

Parties reach it through the relay's one public port: the front (``_daemon``) splices each
connection that opens with a ZeroMQ greeting to the ROUTER here, bound on a Unix socket in a
folder only the relay's user can enter. The ROUTER is the CURVE server with the relay's key;
libzmq asks the ZAP socket about every handshake, and a key not in the file is refused and
logged. The file is read again when it changes; a key taken out of it loses its registration
and its splices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio

from distrib._errors import ProtocolError
from distrib._logs import RateLimited
from distrib.wire import _keys, _zap
from distrib.wire import _relay_messages as rm
from distrib.wire._keys import KeyPair

log = logging.getLogger("distrib.relay")
peer_log = RateLimited(log)

LOST_AFTER = 5.0  # seconds without a Register after which a party is forgotten
RELOAD_EVERY = 2.0  # seconds between looks at the authorized-keys file


@dataclass
class Party:
    """A registered party: where its control messages go, and whether it takes splices."""

    key: str
    routing_id: bytes
    accepts: bool
    seen: float


# (requester's key, peer's key) -> (requester's token, peer's token), or why not
Pairer = Callable[[str, str], "tuple[bytes, bytes] | str"]


class Control:
    """The ZAP responder, the control ROUTER and the registry of parties."""

    def __init__(self, ctx: zmq.asyncio.Context, key: KeyPair, authorized_file: Path,
                 endpoint: str, pair: Pairer, on_revoked: Callable[[str], None]) -> None:
        self.authorized_file = authorized_file
        self._keys = _keys.Watched(authorized_file, _keys.read_authorized,
                                   "authorized keys")  # (ConfigError at start)
        self.authorized = self._keys.value
        self.parties: dict[str, Party] = {}
        self._pair, self._on_revoked = pair, on_revoked
        self._refusals = _zap.Refusals()
        self.zap = ctx.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(_zap.ENDPOINT)  # (before the ROUTER binds: libzmq asks ZAP from then on)
        self.router = ctx.socket(zmq.ROUTER)
        self.router.curve_server = True
        self.router.curve_secretkey = key.secret.encode()
        self.router.curve_publickey = key.public.encode()
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, rm.MAX_CONTROL_BYTES)
        self.router.setsockopt(zmq.HANDSHAKE_IVL, 5000)  # a silent connection goes in 5 s
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # (a send to a gone party raises)
        self.router.bind(endpoint)
        self._out: zmq.Socket[bytes] = zmq.Socket.shadow(self.router.underlying)  # (plain: a failed send raises)

    async def run(self) -> None:
        await asyncio.gather(self._answer_zap(), self._serve(), self._tend())

    def close(self) -> None:
        self.router.close(0)
        self.zap.close(0)

    async def _answer_zap(self) -> None:
        while True:
            request = _zap.Request(await self.zap.recv_multipart())
            ok = request.curve and request.key in self.authorized
            if not ok and self._refusals.due(request.key):
                log.warning("refused a party: key %s is not in the authorized keys %s",
                            request.key or "(none)", self.authorized_file)
            await self.zap.send_multipart(request.answer(ok))

    async def _serve(self) -> None:
        while True:
            frames = await self.router.recv_multipart(copy=False)
            if len(frames) != 2:
                continue
            routing_id, frame = frames[0].bytes, frames[1]
            key = frame.get("User-Id")
            try:
                message = rm.decode(frame.bytes)
            except ProtocolError as exc:
                peer_log.warning("party %s: %s", key, exc)
                continue
            if key not in self.authorized:
                continue  # (revoked since its handshake)
            if isinstance(message, rm.Register):
                self._register(key, routing_id, message)
            elif isinstance(message, rm.Connect):
                self._connect(key, routing_id, message)
            else:
                peer_log.warning("party %s sent %s, which only the relay sends", key,
                                 type(message).__name__)

    def _register(self, key: str, routing_id: bytes, message: rm.Register) -> None:
        if message.version != rm.RELAY_PROTOCOL:
            peer_log.warning("party %s speaks relay protocol %d, this relay %d: not registered",
                             key, message.version, rm.RELAY_PROTOCOL)
            return
        known = self.parties.get(key)
        if known is None or known.routing_id != routing_id:
            log.info("party %s registered%s", key, " (takes splices)" if message.accepts else "")
        self.parties[key] = Party(key, routing_id, message.accepts, time.monotonic())
        self._send(routing_id, rm.Registered(rm.RELAY_PROTOCOL, LOST_AFTER))

    def _connect(self, key: str, routing_id: bytes, message: rm.Connect) -> None:
        peer = self.parties.get(message.peer)
        if key not in self.parties:
            outcome: tuple[bytes, bytes] | str = "this party is not registered at the relay"
        elif peer is None:
            outcome = f"no party of key {message.peer} is registered at the relay"
        elif not peer.accepts:
            outcome = f"the party of key {message.peer} takes no splices"
        elif message.peer == key:
            outcome = "a party cannot be spliced to itself"
        else:
            outcome = self._pair(key, message.peer)
        if isinstance(outcome, str):
            self._send(routing_id, rm.Unreachable(message.request, outcome))
            return
        assert peer is not None
        self._send(routing_id, rm.Splice(message.request, outcome[0]))
        self._send(peer.routing_id, rm.Incoming(outcome[1], key))

    def _send(self, routing_id: bytes, message: rm.RelayMessage) -> None:
        try:
            self._out.send_multipart([routing_id, rm.encode(message)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # (the party is gone or not reading: the token expires)

    async def _tend(self) -> None:
        """Forget silent parties; read the authorized keys again when the file changed."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for key, party in list(self.parties.items()):
                if now - party.seen > LOST_AFTER:
                    log.info("party %s is gone (silent for %.0f s)", key, now - party.seen)
                    del self.parties[key]
            self._reload()

    def _reload(self) -> None:
        if not self._keys.reload():
            return
        authorized = self._keys.value
        revoked = set(self.authorized) - set(authorized)
        self.authorized = authorized
        log.info("authorized keys: %d part%s from %s", len(authorized),
                 "y" if len(authorized) == 1 else "ies", self.authorized_file)
        for key in revoked:
            self.parties.pop(key, None)
            self._on_revoked(key)

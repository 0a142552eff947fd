"""The party side of a relay: a Main or a worker that cannot accept connections is reached
through a relay, by public key.

A ``RelayParty`` keeps a control connection to the relay (ZeroMQ CURVE: it proves its own key
and checks the relay's), registers every second, and builds that connection again when the
relay stops answering (libzmq reconnects with a backoff capped at one second). Then:

- ``forward(peer)`` listens on a local address; each connection made there (a ZeroMQ socket
  connecting to it) is spliced, through the relay, to the party of key ``peer``;
- ``expose(target)`` lets other parties reach this one: each splice they ask for is joined to a
  new connection to ``target`` (a local ZeroMQ socket that binds there).

The ZeroMQ sockets at both ends run their CURVE session through these splices end to end; the
relay and this module only copy its bytes. Everything runs in one thread with its own event
loop, so a Main's I/O thread and a worker's loop use it alike.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Coroutine
from pathlib import Path
from typing import Any, cast

import zmq
import zmq.asyncio

from distrib._errors import ConfigError, ProtocolError
from distrib._logs import RateLimited
from distrib.wire import _relay_messages as rm
from distrib.wire import _transport
from distrib.wire._keys import KeyPair
from distrib.wire._splice import Splice, Waiting, connect, split_host_port

log = logging.getLogger("distrib.relay")
peer_log = RateLimited(log)

HEARTBEAT = 1.0  # seconds between Registers
LOST_AFTER = 3.0  # seconds without a Registered after which the control link is built again
ASK_TIMEOUT = 10.0  # seconds to wait for the relay's answer to a Connect


class RelayParty:
    """A party's link to one relay. ``start()`` it, then ``forward`` and ``expose``;
    ``close()`` ends every splice."""

    def __init__(self, relay: str, relay_key: str, key: KeyPair) -> None:
        try:
            self._relay_host, self._relay_port = split_host_port(relay.removeprefix("tcp://"))
        except ValueError:
            raise ConfigError(f"relay address {relay!r}: expected host:port") from None
        self.relay, self.relay_key, self.key = relay, relay_key, key
        self.registered = False  # the relay answered within LOST_AFTER
        self.refused: str | None = None  # why the relay refused this party's key, if it did
        self.splices: set[Splice] = set()
        self._target: str | None = None
        self._allow: frozenset[str] | None = None
        self._asks: dict[int, asyncio.Future[bytes]] = {}
        self._ids = itertools.count(1)
        self._servers: list[asyncio.AbstractServer] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._sock: zmq.Socket[bytes] | None = None  # (plain: a send that cannot go raises)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="distrib-relay-party", daemon=True)
        self._main: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # splices being made

    # --- from any thread ---------------------------------------------------------------------

    def start(self) -> RelayParty:
        self._thread.start()
        return self

    def forward(self, peer: str, local: str = "tcp://127.0.0.1:0", timeout: float = 10.0) -> str:
        """Listen at ``local`` (``tcp://127.0.0.1:0`` picks a port; ``ipc://`` a Unix socket,
        ``ipc://`` alone one in a folder only this user can enter) and splice each connection
        made there to the party of key ``peer``; the endpoint a ZeroMQ socket connects to."""
        return asyncio.run_coroutine_threadsafe(self._listen(peer, local),
                                                self._loop).result(timeout)

    def expose(self, target: str, allow: Collection[str] | None = None) -> None:
        """Accept splices from other parties (only those of the keys in ``allow``, if given),
        each joined to a new connection to ``target`` (``tcp://host:port`` or ``ipc://path``)."""
        self._allow = None if allow is None else frozenset(allow)
        self._target = target

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop)
            self._thread.join(10)
        elif self._thread.ident is None:  # (never started)
            self._loop.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    # --- in the party's thread ---------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        ctx = zmq.asyncio.Context()
        try:
            self._main = self._loop.create_task(self._control(ctx))
            self._loop.run_until_complete(self._main)
        except asyncio.CancelledError:
            pass
        finally:
            for server in self._servers:
                server.close()
            for task in list(self._tasks):
                task.cancel()  # (their connections close as they end)
            self._loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
            for splice in list(self.splices):
                splice.close()
            self._loop.run_until_complete(asyncio.sleep(0))  # (let the transports close)
            ctx.destroy(0)
            self._loop.close()

    def _stop(self) -> None:
        if self._main is not None:
            self._main.cancel()

    async def _control(self, ctx: zmq.asyncio.Context) -> None:
        """Keep a registered control link to the relay, and answer what it says."""
        while True:
            sock = self._control_socket(ctx)
            self._sock = zmq.Socket.shadow(sock.underlying)
            monitor = cast(zmq.asyncio.Socket, _transport.monitor(  # (its context's kind)
                sock, zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED
                | zmq.EVENT_DISCONNECTED))
            last = time.monotonic()
            try:
                while time.monotonic() - last < LOST_AFTER:
                    self._send(rm.Register(rm.RELAY_PROTOCOL, self._target is not None))
                    until = time.monotonic() + HEARTBEAT
                    while (wait := until - time.monotonic()) > 0:
                        ready = dict(await _poll([sock, monitor], wait))
                        if monitor in ready:
                            self._on_monitor(await monitor.recv_multipart())
                        if sock in ready:
                            if self._on_message(await sock.recv()):
                                last = time.monotonic()
                if self.registered:
                    log.warning("relay %s stopped answering; connecting again", self.relay)
                self.registered = False
            finally:
                sock.disable_monitor()
                monitor.close(0)
                sock.close(0)

    def _control_socket(self, ctx: zmq.asyncio.Context) -> zmq.asyncio.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.curve_serverkey = self.relay_key.encode()
        sock.curve_publickey = self.key.public.encode()
        sock.curve_secretkey = self.key.secret.encode()
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # nothing queued for a relay that is not there
        sock.setsockopt(zmq.MAXMSGSIZE, rm.MAX_CONTROL_BYTES)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.connect(f"tcp://{self.relay.removeprefix('tcp://')}")
        return sock

    def _send(self, message: rm.RelayMessage) -> None:
        assert self._sock is not None
        try:
            self._sock.send(rm.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            pass  # (not connected: the next Register says it again)

    def _on_monitor(self, frames: list[bytes]) -> None:
        event = int.from_bytes(frames[0][:2], sys.byteorder)  # (libzmq writes it native)
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            if self.refused is None:
                log.error("relay %s refused this party's key %s: add it to the relay's "
                          "authorized keys", self.relay, self.key.public)
            self.refused = "the relay did not authorize this key"
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.refused = None
            self._send(rm.Register(rm.RELAY_PROTOCOL, self._target is not None))  # (at once)
        elif event == zmq.EVENT_DISCONNECTED and self.registered:
            log.warning("lost the connection to relay %s; connecting again", self.relay)
            self.registered = False  # (libzmq connects again by itself)

    def _on_message(self, frame: bytes) -> bool:
        """Handle one message of the relay; whether it was a Registered."""
        try:
            message = rm.decode(frame)
        except ProtocolError as exc:
            peer_log.warning("relay %s: %s", self.relay, exc)
            return False
        if isinstance(message, rm.Registered):
            if not self.registered:
                log.info("registered at relay %s as %s", self.relay, self.key.public)
            self.registered = True
            return True
        if isinstance(message, (rm.Splice, rm.Unreachable)):
            ask = self._asks.pop(message.request, None)
            if ask is not None and not ask.done():
                if isinstance(message, rm.Splice):
                    ask.set_result(message.token)
                else:
                    ask.set_exception(ConnectionError(message.reason))
        elif isinstance(message, rm.Incoming):
            if self._target is None or (self._allow is not None
                                        and message.peer not in self._allow):
                peer_log.warning("relay %s: refused a splice from key %s (not exposed to it)",
                                 self.relay, message.peer)
            else:
                self._spawn(self._incoming(message.token, message.peer, self._target))
        return False

    async def _listen(self, peer: str, local: str) -> str:
        loop = asyncio.get_running_loop()
        if local == "ipc://":
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="distrib-relay-")
            local = f"ipc://{Path(self._tmp.name) / f'{len(self._servers)}.sock'}"

        def accepted() -> Waiting:
            waiting = Waiting()
            self._spawn(self._outgoing(waiting, peer))
            return waiting

        if local.startswith("ipc://"):
            server = await loop.create_unix_server(accepted, local.removeprefix("ipc://"))
            address = local
        else:
            host, port = split_host_port(local.removeprefix("tcp://"))
            server = await loop.create_server(accepted, host, port)
            bound = server.sockets[0].getsockname()
            address = f"tcp://{host}:{bound[1]}"
        self._servers.append(server)
        return address

    async def _outgoing(self, local: Waiting, peer: str) -> None:
        """A local connection to splice to ``peer``: ask the relay, then join."""
        request = next(self._ids)
        ask: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._asks[request] = ask
        remote: Waiting | None = None
        try:
            await asyncio.sleep(0)  # (the local connection's connection_made comes first)
            deadline = time.monotonic() + ASK_TIMEOUT
            while not self.registered:  # (a party just started, or a relay coming back)
                if self.refused or time.monotonic() > deadline:
                    raise ConnectionError(self.refused or f"not registered at relay {self.relay}")
                await asyncio.sleep(0.05)
            self._send(rm.Connect(request, peer))
            token = await asyncio.wait_for(ask, max(deadline - time.monotonic(), 1.0))
            remote = await self._open_splice(token)
            self._join(local, remote)
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            peer_log.warning("no splice to %s through relay %s: %s", peer, self.relay,
                             exc or "no answer")
        finally:
            self._asks.pop(request, None)
            _close_unjoined(local, remote)

    async def _incoming(self, token: bytes, peer: str, target: str) -> None:
        """A splice ``peer`` asked for: join a new connection to ``target`` to it."""
        local = remote = None
        try:
            local = await connect(target)
            remote = await self._open_splice(token)
            self._join(local, remote)
        except OSError as exc:
            peer_log.warning("a splice from %s: cannot connect to %s: %s", peer,
                             target if local is None else f"relay {self.relay}", exc)
        finally:
            _close_unjoined(local, remote)

    async def _open_splice(self, token: bytes) -> Waiting:
        remote = await connect(f"tcp://{self._relay_host}:{self._relay_port}")
        assert remote.transport is not None
        remote.transport.write(rm.MAGIC + token)
        return remote

    def _join(self, local: Waiting, remote: Waiting) -> None:
        assert local.transport is not None and remote.transport is not None
        if local.closed.done() or remote.closed.done():
            return
        splice = Splice(local.transport, remote.transport, a_early=local.early,
                        b_early=remote.early, on_close=self.splices.discard)
        local.joined = remote.joined = True
        if not splice.closed:
            self.splices.add(splice)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _close_unjoined(*held: Waiting | None) -> None:
    for waiting in held:
        if waiting is not None and not waiting.joined and waiting.transport is not None:
            waiting.transport.close()


async def _poll(socks: list[zmq.asyncio.Socket], timeout: float) -> list[tuple[Any, int]]:
    poller = zmq.asyncio.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    return await poller.poll(timeout * 1000)

"""Who may connect: the ZAP check of Mains' keys, the authorized-keys file and the quotas it
sets, refused connections.

libzmq asks the ZAP socket about every CURVE handshake; the answer comes from the
authorized-keys file (reread when it changes, or at the next tick after SIGHUP). A line of it
is ``<key> [name] [slots=N] [priority=P] [network=none|loopback|all]``: at most N slots for
the Mains of that key together, a share P times a priority-1 key's when keys all want more,
and what its Mains' sandboxed tasks may reach (default: the owner's ``--task-network``).
Connections that never complete a handshake (garbage, HTTP, a wrong key) never reach the
daemon as messages: the socket monitor tells of them, and they are counted and logged here.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import zmq
from msgspec import Struct

from distrib._errors import ConfigError
from distrib._logs import RateLimited
from distrib.wire import _keys, _transport, _zap
from distrib.wire._keys import KeyPair

log = logging.getLogger("distrib.worker")
peer_log = RateLimited(log)  # for what a remote peer (or task code) can trigger


_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
           | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)

# libzmq reports a failed handshake as a ZMQ_PROTOCOL_ERROR_* code, which strerror() does not
# know ("Unknown error 285212673"): name them.
_PROTOCOL_ERRORS = {
    getattr(zmq, name): name.removeprefix("PROTOCOL_ERROR_").lower().replace("_", " ")
    for name in dir(zmq) if name.startswith("PROTOCOL_ERROR_")
}


_SETTING = re.compile(r"^([A-Za-z_]+)=(\S*)$")


class Quota(Struct, frozen=True):
    """What the Mains of one key may use together: at most ``slots`` slots (None: any), and
    their ``priority``."""

    slots: int | None = None
    priority: float = 1.0
    network: str | None = None  # what its tasks may reach (None: the owner's default)

    def __str__(self) -> str:
        out = [f"at most {self.slots} slot(s)"] if self.slots is not None else []
        if self.priority != 1.0:
            out.append(f"priority {self.priority:g}")
        if self.network is not None:
            out.append(f"network {self.network}")
        return ", ".join(out)


def parse_quota(comment: str, where: str) -> Quota:
    """The ``slots=N`` and ``priority=P`` of an authorized key's comment."""
    values: dict[str, str] = {}
    for word in comment.split():
        match = _SETTING.match(word)
        if match is None:
            continue  # (part of the name)
        name, value = match.groups()
        if name in ("slots", "priority", "network"):
            values[name] = value
        elif name.lower().startswith(("slot", "prio", "net")):  # (a typo; other words are
            raise ConfigError(f"{where}: unknown setting {name!r}; a key's line takes "  # names)
                              "slots=N, priority=P and network=none|loopback|all")
    try:
        slots = int(values["slots"]) if "slots" in values else None
        priority = float(values.get("priority", "1"))
    except ValueError:
        raise ConfigError(f"{where}: slots= takes a whole number, priority= a number") from None
    if slots is not None and slots < 1:
        raise ConfigError(f"{where}: slots={slots}: expected at least 1")
    if not 0 < priority < 1e6:
        raise ConfigError(f"{where}: priority={priority:g}: expected a number above 0 and "
                          "below a million")
    network = values.get("network")
    if network is not None:
        from distrib.worker._sandbox import check_network

        check_network(network, f"{where}: network")
    return Quota(slots, priority, network)


def read_quotas(path: Path) -> dict[str, Quota]:
    """The authorized keys of ``path`` and their quotas (ConfigError naming a bad line)."""
    return {key: parse_quota(comment, f"authorized keys {path}, key {key[:8]}...")
            for key, comment in _keys.read_authorized(path).items()}


def describe_handshake_error(code: int) -> str:
    """A readable name for the ``value`` of a failed-handshake event."""
    if code in _PROTOCOL_ERRORS:
        return f"protocol error: {_PROTOCOL_ERRORS[code]}"
    return zmq.strerror(code)


class Gate:
    """The daemon's ZAP responder and connection monitor for its ROUTER socket."""

    def __init__(self, ctx: zmq.Context[Any], key: KeyPair | None,
                 authorized_file: Path | None, dialled: frozenset[str] = frozenset()) -> None:
        self.authorized_file = authorized_file
        self.dialled = dialled  # the keys of the Mains it dials (``--main-key``): those may
        # connect to it too (without a file, they alone may)
        self._keys: _keys.Watched[dict[str, Quota]] | None = None
        self.dropped_connections = 0
        self._refusals = _zap.Refusals()
        self._unconfirmed: list[int] = []  # accepted connections not yet through a handshake
        self.closed: list[int] = []  # file descriptors of ZeroMQ connections that closed
        self._open: set[int] = set()  # descriptors accepted and not closed, in event order
        self.zap: zmq.Socket[Any] | None = None
        self.monitor: zmq.Socket[Any] | None = None
        if key is not None:
            self.zap = ctx.socket(zmq.REP)
            self.zap.setsockopt(zmq.LINGER, 0)
            self.zap.bind(_zap.ENDPOINT)
            if authorized_file is not None:  # (errors at start are fatal)
                self._keys = _keys.Watched(authorized_file, read_quotas, "authorized keys")
                self._loaded()

    def watch(self, sock: zmq.Socket[Any]) -> None:
        """Start monitoring ``sock`` (the bound ROUTER)."""
        self.monitor = _transport.monitor(sock, _EVENTS)

    def sockets(self) -> list[zmq.Socket[Any]]:
        return [s for s in (self.zap, self.monitor) if s is not None]

    def on_readable(self, sock: zmq.Socket[Any]) -> None:
        if sock is self.zap:
            self._answer_zap()
        elif sock is self.monitor:
            while self._on_connection_event():
                pass

    def take_closed(self) -> list[int]:
        """The connections that closed, and stay closed once every pending event is read: a
        descriptor the kernel already gave to a new connection (whose Hello may have been
        read before the old one's close event) is not the new one's death notice."""
        if self.monitor is not None:
            while self._on_connection_event():
                pass
        closed, self.closed = self.closed, []
        return [fd for fd in closed if fd not in self._open]

    def main_keys(self) -> frozenset[str] | None:
        """The keys of the Mains that may connect (the authorized ones, and those dialled);
        None: any key (``--insecure`` with a key and nothing else)."""
        if self.authorized_file is None and not self.dialled:
            return None
        return frozenset(self.authorized) | self.dialled

    @property
    def authorized(self) -> dict[str, Quota]:
        """The authorized keys and their quotas ({} without a file)."""
        return self._keys.value if self._keys is not None else {}

    def request_reload(self) -> None:
        """Reread the authorized keys at the next ``reload()`` (SIGHUP)."""
        if self._keys is not None:
            self._keys.changed()

    def quota(self, key: str) -> Quota:
        """What the Main with public key ``key`` may use here."""
        return self.authorized.get(key) or Quota()

    def reload(self) -> bool:
        """Reread the authorized-keys file if it changed; whether it was read again."""
        if self._keys is None or not self._keys.reload():
            return False
        self._loaded()
        return True

    def _loaded(self) -> None:
        log.info("authorized keys: %d Main(s) from %s", len(self.authorized), self.authorized_file)

    def close(self, sock: zmq.Socket[Any]) -> None:
        if self.monitor is not None:
            sock.disable_monitor()
            self.monitor.close(0)
        if self.zap is not None:
            self.zap.close(0)

    def _on_connection_event(self) -> bool:
        """Handle one pending monitor event; False when there was none."""
        assert self.monitor is not None
        try:
            event = _transport.monitor_event(self.monitor, zmq.NOBLOCK)
        except zmq.Again:
            return False
        kind, value = event["event"], event["value"]
        # libzmq names the connection (its fd) on accept and disconnect, not on handshake
        # events: those are matched to the oldest pending connection, an approximation.
        if kind == zmq.EVENT_ACCEPTED:
            self._unconfirmed.append(value)
            self._open.add(value)
        elif kind == zmq.EVENT_DISCONNECTED:
            self._open.discard(value)
            if value in self._unconfirmed:
                self._unconfirmed.remove(value)
                self.dropped_connections += 1
                peer_log.warning("dropped a connection that never completed the ZeroMQ handshake "
                                 "(garbage bytes, or another protocol such as HTTP)")
            else:
                self.closed.append(value)  # (the daemon says whose, if anyone's)
        else:  # a handshake ended: the peer spoke ZeroMQ, so its closing is not "garbage"
            if self._unconfirmed:
                self._unconfirmed.pop(0)
            if kind != zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.dropped_connections += 1
            if kind not in (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_HANDSHAKE_FAILED_AUTH):
                # (refused keys are logged by _answer_zap)
                peer_log.warning("dropped a connection whose ZeroMQ handshake failed (%s): a peer "
                                 "with the wrong key for this worker, or without keys",
                                 describe_handshake_error(value))
        return True

    def _answer_zap(self) -> None:
        assert self.zap is not None
        try:
            request = _zap.Request(self.zap.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return
        key = request.key
        ok = request.curve and (key in self.authorized or key in self.dialled or (
            self.authorized_file is None and not self.dialled))
        if not ok and self._refusals.due(key):
            peer_log.warning("refused a Main from %s: key %s is not in the authorized keys %s",
                             request.address, key or "(none)", self.authorized_file)
        self.zap.send_multipart(request.answer(ok))

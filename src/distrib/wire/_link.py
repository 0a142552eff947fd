"""One link to a worker, as a Main (or a worker sending calls for a Main) holds it: a DEALER
socket, the monitor that reports its handshake failures and disconnections, and its life cycle
with the timers of one ``LinkPolicy``.

    NEW -connect-> CONNECTING -Welcome-> READY -silent, closed, Refused-> LOST / REFUSED
                        \\-key refused or unproven-> AUTH_FAILED (or REFUSED)
                        \\-handshake timed out-> LOST
    LOST, REFUSED, AUTH_FAILED -the policy's wait-> connect again

What a link is for (its Hello, what its Welcome means) is its holder's: this module only moves
it through the states, and ``check`` decides, from the time alone, what a tick does to it.
"""

from __future__ import annotations

import enum
import errno
import logging
import time
from typing import Any

import zmq
from msgspec import Struct, field

from distrib.wire import _transport
from distrib.wire import _messages as m
from distrib.wire._carry import Carried
from distrib.wire._keys import KeyPair
from distrib.wire._limits import MAX_MESSAGE_BYTES

_WATCHED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED)

log = logging.getLogger("distrib")


class LinkState(enum.Enum):
    NEW = "new"  # never connected yet
    CONNECTING = "connecting"  # Hello sent, no answer yet
    READY = "ready"  # Welcome received; tasks may go there
    REFUSED = "refused"  # the worker said no; retried later
    LOST = "lost"  # silent too long, or the connection closed; the socket is rebuilt later
    AUTH_FAILED = "auth failed"  # a key was refused (either way); retried later


class LinkCheck(enum.Enum):
    """What a tick does to one link (``check``)."""

    WAIT = "wait"  # nothing now
    HEARTBEAT = "heartbeat"  # alive and heard from lately: send a Heartbeat
    LOSE = "lose"  # silent longer than ``lost_after``: declare it lost
    CONNECT = "connect"  # new, or down long enough: connect (again)
    SLOW = "slow"  # still connecting after half ``lost_after``: say so (once)


class MonitorEvent(enum.Enum):
    """What a link's monitor reports."""

    DISCONNECTED = "disconnected"  # the connection closed (a worker killed, a reset)
    KEY_REFUSED = "key refused"  # the worker does not authorize our key
    KEY_UNPROVEN = "key unproven"  # the worker did not prove the key we expect (or no CURVE)
    HANDSHAKE_TIMEOUT = "handshake timeout"  # it took the connection and never finished the
    # handshake (a frozen or overloaded worker, or something else listening there)
    CONNECTED = "connected"  # the connection is up, its handshake under way (nothing to do)


class LinkPolicy(Struct, frozen=True):
    """How long a link may be silent, and when one that failed is tried again."""

    lost_after: float  # a link silent this long is lost
    retry_after: float  # a lost or refused link is tried again after this
    auth_retry_after: float  # a link whose key was refused, after this (keys change slowly)
    lose_connecting: bool = False  # a link still connecting is lost after ``lost_after`` of
    # silence too (and gets heartbeats); else it is only ``SLOW`` after half of it


def check(state: LinkState, since: float, last_seen: float, now: float,
          policy: LinkPolicy) -> LinkCheck:
    """What a tick does to a link in ``state`` since ``since``, last heard at ``last_seen``."""
    if state is LinkState.READY or (state is LinkState.CONNECTING and policy.lose_connecting):
        return LinkCheck.LOSE if now - last_seen > policy.lost_after else LinkCheck.HEARTBEAT
    if state is LinkState.NEW:
        return LinkCheck.CONNECT
    if state in (LinkState.LOST, LinkState.REFUSED):
        return LinkCheck.CONNECT if now - since > policy.retry_after else LinkCheck.WAIT
    if state is LinkState.AUTH_FAILED:
        return LinkCheck.CONNECT if now - since > policy.auth_retry_after else LinkCheck.WAIT
    # A few seconds (half the time after which a silent worker counts as lost).
    return LinkCheck.SLOW if now - since > policy.lost_after / 2 else LinkCheck.WAIT


class Link(Struct, eq=False, kw_only=True):
    """A DEALER socket to one worker, rebuilt at each ``connect``."""

    address: str  # as configured (or as a Peers message names it)
    endpoint: str  # as ZeroMQ takes it
    ctx: zmq.Context[Any]
    server_key: str | None = None  # the worker's public key: CURVE when set
    key: KeyPair | None = None  # our key pair
    sock: zmq.Socket[Any] | None = None
    monitor: zmq.Socket[Any] | None = None  # handshake failures show up here
    state: LinkState = LinkState.NEW
    since: float = 0.0  # when the current state began
    last_seen: float = 0.0  # when the worker was last heard from
    reason: str = ""  # why it was refused or lost
    max_frame: int = MAX_MESSAGE_BYTES  # the worker's frame limit (its Welcome says)
    connected_at: float = 0.0  # when its connection last came up (0: not since ``connect``)
    carried: Carried = field(default_factory=Carried)  # payload frames it sent ahead

    def connect(self, now: float, hello: m.Hello) -> None:
        """(Re)build the socket and say ``hello`` (raises ``zmq.ZMQError`` for an endpoint
        or key ZeroMQ refuses)."""
        self.close()
        self.carried, self.connected_at = Carried(), 0.0
        self.sock = _transport.dealer(self.ctx, self.endpoint, self.server_key, self.key,
                                      connect=False)
        self.monitor = _transport.monitor(self.sock, _WATCHED)  # (before: no event is missed)
        try:
            self.sock.connect(self.endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self.state, self.since, self.last_seen = LinkState.CONNECTING, now, now
        self.send(hello)

    def send(self, message: m.Message) -> None:
        if self.sock is None:
            return
        try:
            _transport.send(self.sock, message, max_frame=self.max_frame)
        except (zmq.ZMQError, RuntimeError) as exc:  # RuntimeError: pyzmq at interpreter exit
            log.debug("send to %s failed: %s", self.address, exc)

    def receive(self, now: float) -> list[Any] | None:
        """The frames of the worker's next whole message, or None for a payload frame it
        sent ahead of its message (it is alive, so it counts as heard from). Raises
        ``zmq.Again`` when there is none, ``ProtocolError`` for too many sent ahead."""
        assert self.sock is not None
        frames = self.carried.take(_transport.recv_frames(self.sock))
        if frames is None:
            self.last_seen = now
        return frames

    def close(self) -> None:
        _transport.close_monitored(self.sock, self.monitor)
        self.sock = self.monitor = None

    def down(self, state: LinkState, now: float, reason: str) -> None:
        """Close it: it is ``state`` (lost, refused...) from ``now``, for ``reason``."""
        self.close()
        self.state, self.since, self.reason = state, now, reason

    def check(self, now: float, policy: LinkPolicy) -> LinkCheck:
        return check(self.state, self.since, self.last_seen, now, policy)

    def event(self, flags: int = 0) -> MonitorEvent:
        """The monitor's next event (raises ``zmq.Again`` with ``zmq.NOBLOCK`` and none)."""
        assert self.monitor is not None
        event = _transport.monitor_event(self.monitor, flags)
        if event["event"] == zmq.EVENT_CONNECTED:
            self.connected_at = time.monotonic()
            return MonitorEvent.CONNECTED
        if event["event"] == zmq.EVENT_DISCONNECTED:
            return MonitorEvent.DISCONNECTED
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return MonitorEvent.KEY_REFUSED
        # A key the worker cannot prove ends the handshake at once (the worker closes); one
        # that outlasts HANDSHAKE_IVL ends with it. (By the time, not the errno libzmq gives:
        # that is whatever its I/O thread, shared by every socket, last saw.)
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self.connected_at and \
                event["value"] not in (errno.EPIPE, errno.ECONNRESET):
            ivl = self.handshake_seconds()
            if ivl > 0 and time.monotonic() - self.connected_at >= 0.9 * ivl:
                return MonitorEvent.HANDSHAKE_TIMEOUT
        return MonitorEvent.KEY_UNPROVEN

    def handshake_seconds(self) -> float:
        """How long a handshake may take on its socket (libzmq's ``HANDSHAKE_IVL``)."""
        ivl = self.sock.getsockopt(zmq.HANDSHAKE_IVL) if self.sock is not None else 0
        return ivl / 1000 if isinstance(ivl, int) else 0.0

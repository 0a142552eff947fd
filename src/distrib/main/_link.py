"""One Main-to-worker connection: its socket, handshake state and liveness."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any

import zmq

from distrib.wire import _transport
from distrib.wire import _messages as m
from distrib.wire._keys import KeyPair
from distrib.wire._limits import MAX_MESSAGE_BYTES

_WATCHED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_DISCONNECTED)

log = logging.getLogger("distrib")


class LinkState(enum.Enum):
    CONNECTING = "connecting"  # Hello sent, no answer yet
    READY = "ready"  # Welcome received; the scheduler may use it
    REFUSED = "refused"  # the worker said no; retried later
    LOST = "lost"  # silent too long; the socket is rebuilt later
    AUTH_FAILED = "auth failed"  # a key was refused (either way); retried later


@dataclass(eq=False)
class Link:
    """A DEALER socket to one worker, rebuilt after the worker is lost."""

    link_id: str
    address: str  # as configured
    endpoint: str  # as ZeroMQ takes it
    ctx: zmq.Context[Any]
    hello: m.Hello
    server_key: str | None = None  # the worker's public key: CURVE when set
    key: KeyPair | None = None  # this Main's key pair
    sock: zmq.Socket[Any] | None = None
    monitor: zmq.Socket[Any] | None = None  # handshake failures show up here
    state: LinkState = LinkState.CONNECTING
    name: str = ""
    last_seen: float = 0.0
    since: float = 0.0  # when the current state began
    reason: str = ""  # why it was refused or lost
    max_frame: int = MAX_MESSAGE_BYTES  # the worker's frame limit (its Welcome says)
    shm: bool = False  # large frames go through /dev/shm (its Welcome says it shares ours)
    worker_state: str = "serving"  # its owner's word: "serving", "paused" or "draining"
    building: bool = False  # it said it builds this Main's environment, and ran nothing since
    has_workspace: bool = False  # it ran a task of this Main: it holds the workspace

    def connect(self, now: float) -> None:
        """(Re)build the socket and say Hello."""
        self.close()
        self.sock = _transport.dealer(self.ctx, self.endpoint, self.server_key, self.key)
        self.monitor = self.sock.get_monitor_socket(_WATCHED)
        self.state, self.since, self.last_seen = LinkState.CONNECTING, now, now
        self.send(self.hello)

    def send(self, message: m.Message) -> None:
        if self.sock is None:
            return
        try:
            _transport.send(self.sock, message, max_frame=self.max_frame)
        except (zmq.ZMQError, RuntimeError) as exc:  # RuntimeError: pyzmq at interpreter exit
            log.debug("send to %s failed: %s", self.address, exc)

    def close(self) -> None:
        _transport.close_monitored(self.sock, self.monitor)
        self.sock = self.monitor = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.address})" if self.name else self.address

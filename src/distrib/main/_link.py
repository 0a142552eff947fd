"""The Main's link to one worker: the wire's ``Link`` and what the Main knows of that worker.

A link the Main opened has a DEALER of its own; a link a worker opened (it dialled this
Main's listening ROUTER) has that ROUTER and the worker's routing id on it instead.
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

import zmq
from msgspec import field

from distrib.wire import _link, _transport
from distrib.wire import _messages as m
from distrib.wire._carry import Carried
from distrib.wire._link import LinkState, log

ROUND_TRIPS_KEPT = 8  # Pongs whose least delay is the link's round trip
PING_EVERY = 1.0  # seconds between Pings of a ready link


class Link(_link.Link, eq=False, kw_only=True):
    """A link of this Main (``w0``, ``w1``...; ``d0``, ``d1``... for workers that dialled
    it), rebuilt after the worker is lost."""

    link_id: str
    state: LinkState = LinkState.CONNECTING  # (connected as the I/O thread starts)
    name: str = ""  # the worker's, as its Welcome says
    shm: bool = False  # large frames go through /dev/shm (its Welcome says it shares ours)
    worker_state: str = "serving"  # its owner's word: "serving", "paused" or "draining"
    building: bool = False  # it said it builds this Main's environment, and ran nothing since
    has_workspace: bool = False  # it ran a task of this Main: it holds the workspace
    routing_id: bytes = b""  # a worker that dialled: its id on the listening ROUTER
    router: zmq.Socket[Any] | None = None  # (that ROUTER)
    fd: int = -1  # (its connection's file descriptor: when that closes, it is lost)
    pinged: float = 0.0  # when it was last sent a Ping
    # the last round trips Ping -> Pong measured (seconds): their least is the link's own,
    # queueing behind large frames aside
    round_trips: deque[float] = field(default_factory=lambda: deque(maxlen=ROUND_TRIPS_KEPT))
    # Counts every change of any link's sockets: the I/O thread polls the same sockets until
    # it changes, instead of registering every link's anew at each turn (O(workers) a turn).
    sockets_changed: ClassVar[int] = 0

    @property
    def label(self) -> str:
        return f"{self.name} ({self.address})" if self.name else self.address

    @property
    def dialled_in(self) -> bool:
        """The worker opened this link (it dialled this Main)."""
        return bool(self.routing_id)

    def close(self) -> None:
        Link.sockets_changed += 1
        super().close()

    def connect(self, now: float, hello: m.Hello) -> None:
        Link.sockets_changed += 1
        if not self.dialled_in:
            super().connect(now, hello)
            return
        # (a worker that dialled is only greeted again: its connection is its own)
        self.carried = Carried()
        self.state, self.since, self.last_seen = LinkState.CONNECTING, now, now
        self.send(hello)

    def send(self, message: m.Message) -> None:
        if not self.dialled_in:
            super().send(message)
            return
        assert self.router is not None
        try:
            _transport.send(self.router, message, self.routing_id, self.max_frame)
        except (zmq.ZMQError, RuntimeError) as exc:  # RuntimeError: pyzmq at interpreter exit
            log.debug("send to %s failed: %s", self.address, exc)

    def receive_frames(self, frames: list[Any], now: float) -> list[Any] | None:
        """(A worker that dialled) ``frames`` it sent on the listener, as ``receive`` gives
        a message read from a DEALER."""
        whole = self.carried.take(frames)
        if whole is None:
            self.last_seen = now
        return whole

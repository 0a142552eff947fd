"""Per Main, the messages its connection did not take yet.

The worker's socket keeps at most ``SNDHWM_BOUNDED`` messages for each Main beyond what the
connection took; its next messages wait here, in order, and are tried again at every turn of
the loop (a burst of small ones, such as 500 calls made at once in a task, goes out in a few
turns). A Main that reads slower than its tasks produce (a slow link), or not at all (frozen,
or hostile: it still sends its heartbeats), makes its backlog grow: past ``HOLD_BYTES`` none
of its tasks start until all of it went (the core skips a Main in ``held``), so it holds at
most what its running tasks produce, and the slots go to the other Mains. A Main whose
connection takes nothing for ``STUCK_FACTOR`` times ``lost_after`` is dropped (``stuck``):
libzmq says what was read only every half of the socket's mark, so a slow link shows its
progress seconds apart.

Without it, the socket queued everything for such a Main: an authorized Main that stopped
reading its connection made the worker keep every result its tasks produced in memory.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from distrib.wire import _transport

log = logging.getLogger("distrib.peers")

# Where a peer's messages go: a socket (None: no connection, they are dropped), and the
# peer's routing id on it (None on a socket of one peer).
Where = Callable[[bytes], "tuple[zmq.Socket[Any] | None, bytes | None]"]

RETRY_FIRST = 0.001  # seconds until a backlog is tried again, doubled while nothing moves
RETRY_MOST = 0.02
HOLD_BYTES = 4 << 20  # a backlog this large holds its Main's tasks
# libzmq tells the writer what was read every SNDHWM_BOUNDED / 2 messages: 16 pieces of a MiB,
# which take 120 s (12 times lost_after) at 1.1 Mbit/s. A Main reading that slowly still
# hears a piece well within its lost_after; one that takes nothing for that long is dropped.
STUCK_FACTOR = 12


def put(sock: zmq.Socket[Any] | None, frames: list[Any], peer: bytes | None) -> bool:
    """Send one wire message; False when the peer's queue is full. One to a connection that
    is gone counts as sent: it is dropped, as libzmq would."""
    if sock is None:
        return True
    try:
        return _transport.try_send(sock, frames, peer)
    except zmq.ZMQError as exc:
        log.debug("could not send to peer %s: %s", peer.hex()[:8] if peer else "", exc)
        return True


class Backlog:
    """What waits for each Main whose connection is full (see above); ``held``: the Mains
    whose tasks wait for theirs to go."""

    def __init__(self, where: Where, send: Callable[..., bool] = put) -> None:
        self.waiting: dict[bytes, deque[list[Any]]] = {}
        self.held: dict[bytes, None] = {}
        self._bytes: dict[bytes, int] = {}
        self._moved: dict[bytes, float] = {}  # when its connection last took a message
        self._where = where
        self._put = send
        self.retry = RETRY_FIRST

    def __bool__(self) -> bool:
        return bool(self.waiting)

    def send(self, peer: bytes, parts: list[list[Any]], now: float) -> bool:
        """Send a message's ``parts`` to ``peer``, behind what waits for it; True when this
        made it held."""
        waiting = self.waiting.get(peer)
        if waiting is None:
            sock, routing = self._where(peer)
            for i, frames in enumerate(parts):
                if not self._put(sock, frames, routing):
                    waiting = self.waiting[peer] = deque()
                    self._bytes[peer] = 0
                    self._moved[peer] = now
                    self.retry = RETRY_FIRST
                    parts = parts[i:]
                    break
            else:
                return False
        waiting.extend(parts)
        self._bytes[peer] += sum(map(_size, parts))
        if peer not in self.held and self._bytes[peer] >= HOLD_BYTES:
            self.held[peer] = None
            return True
        return False

    def flush(self, now: float) -> list[bytes]:
        """Send what the connections take now; the held Mains whose backlog all went."""
        cleared: list[bytes] = []
        moved = False
        for peer, waiting in list(self.waiting.items()):
            sock, routing = self._where(peer)
            sent = 0
            while waiting and self._put(sock, waiting[0], routing):
                sent += _size(waiting.popleft())
            if sent:
                self._bytes[peer] -= sent
                self._moved[peer] = now
                moved = True
            if not waiting:
                if peer in self.held:
                    cleared.append(peer)
                self.drop(peer)
        self.retry = RETRY_FIRST if moved else min(self.retry * 2, RETRY_MOST)
        return cleared

    def stuck(self, now: float, after: float) -> list[bytes]:
        """Mains whose connection took nothing for ``after`` seconds."""
        return [peer for peer, moved in self._moved.items() if now - moved > after]

    def size(self, peer: bytes) -> int:
        """Messages waiting for ``peer``."""
        return len(self.waiting.get(peer, ()))

    def drop(self, peer: bytes) -> None:
        """Nothing more goes to ``peer`` (it left)."""
        self.waiting.pop(peer, None)
        self.held.pop(peer, None)
        self._bytes.pop(peer, None)
        self._moved.pop(peer, None)


def _size(frames: list[Any]) -> int:
    return sum(memoryview(f).nbytes for f in frames)

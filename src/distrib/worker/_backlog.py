"""Per Main, the messages its connection did not take yet.

The worker's socket keeps at most ``SNDHWM_BOUNDED`` messages for each Main beyond what the
connection took. A Main that reads slower than its tasks produce (a slow link), or not at all
(frozen, or hostile: it still sends its heartbeats), fills them; its next messages then wait
here, in order, and are tried again at every turn of the loop. Meanwhile none of its tasks
start (the core skips a Main found here), so its backlog holds at most what its running tasks
produce, and the slots go to the other Mains. A Main whose connection takes nothing for
``lost_after`` seconds is dropped (``stuck``), as a silent one is.

Without it, the socket queued everything for such a Main: an authorized Main that stopped
reading its connection made the worker keep every result its tasks produced in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

# Send one wire message; False when the peer's queue is full (a message to a connection that
# is gone counts as sent: it is dropped, as libzmq would).
Put = Callable[[list[Any]], bool]

RETRY_FIRST = 0.001  # seconds until a backlog is tried again, doubled while nothing moves
RETRY_MOST = 0.05


class Backlog:
    """What waits for each congested Main (see above); ``peer in backlog``: it is congested."""

    def __init__(self) -> None:
        self._waiting: dict[bytes, deque[list[Any]]] = {}
        self._moved: dict[bytes, float] = {}  # when its connection last took a message
        self.retry = RETRY_FIRST

    def __contains__(self, peer: object) -> bool:
        return peer in self._waiting

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def send(self, peer: bytes, parts: list[list[Any]], put: Put, now: float) -> bool:
        """Send a message's ``parts`` to ``peer``, behind what waits for it; True when this
        made it congested."""
        waiting = self._waiting.get(peer)
        if waiting is not None:
            waiting.extend(parts)
            return False
        for i, frames in enumerate(parts):
            if not put(frames):
                self._waiting[peer] = deque(parts[i:])
                self._moved[peer] = now
                self.retry = RETRY_FIRST
                return True
        return False

    def flush(self, put_for: Callable[[bytes], Put], now: float) -> list[bytes]:
        """Send what the connections take now; the Mains no longer congested."""
        cleared: list[bytes] = []
        moved = False
        for peer, waiting in list(self._waiting.items()):
            put = put_for(peer)
            while waiting and put(waiting[0]):
                waiting.popleft()
                self._moved[peer] = now
                moved = True
            if not waiting:
                self.drop(peer)
                cleared.append(peer)
        self.retry = RETRY_FIRST if moved else min(self.retry * 2, RETRY_MOST)
        return cleared

    def stuck(self, now: float, after: float) -> list[bytes]:
        """Mains whose connection took nothing for ``after`` seconds."""
        return [peer for peer, moved in self._moved.items() if now - moved > after]

    def size(self, peer: bytes) -> int:
        """Messages waiting for ``peer``."""
        return len(self._waiting.get(peer, ()))

    def drop(self, peer: bytes) -> None:
        """Nothing more goes to ``peer`` (it left)."""
        self._waiting.pop(peer, None)
        self._moved.pop(peer, None)

"""Outcomes on their way back to their Mains: gathered during a turn of the daemon's loop and
sent in batches that each fit a header (``wire/_limits``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from distrib.wire import _messages as m
from distrib.wire._limits import batches
from distrib.wire._messages import Outcome
from distrib.wire._payload import split_payload

Outgoing = tuple[m.ResultSpec, list[Any]]
_NONE: dict[str, int] = {}  # (no frames in /dev/shm: one empty map for all, never changed)


class Outbox:
    """Per Main, the outcomes not sent yet."""

    def __init__(self) -> None:
        self._items: dict[bytes, list[Outgoing]] = defaultdict(list)

    def add(self, peer: bytes, task_id: int, outcome: Outcome, info: dict[str, str],
            frames: list[Any], shm: dict[str, int] | None) -> None:
        inline, separate = split_payload(frames)
        self._items[peer].append(
            (m.ResultSpec(task_id, outcome, info, inline, len(separate), shm or _NONE),
             separate))

    def drop(self, peer: bytes) -> None:
        """The Main left: nothing more goes to it."""
        self._items.pop(peer, None)

    def flush(self, send: Callable[[bytes, m.Message], None]) -> None:
        for peer, items in self._items.items():
            for batch in batches(items, _header_bytes):
                send(peer, m.Results([spec for spec, _ in batch],
                                     frames=tuple(f for _, fs in batch for f in fs)))
        self._items.clear()


def _header_bytes(item: Outgoing) -> int:
    """What one result adds to a Results header: its inline payload and its record's text."""
    spec = item[0]
    size = sum(len(piece) for piece in spec.inline)
    return size + sum(len(text.encode()) for text in spec.info.values()) if spec.info else size

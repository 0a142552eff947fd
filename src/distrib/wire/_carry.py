"""Large payloads as a stream of messages: a message whose payload is more than one piece
sends its payload frames ahead in ``Carry`` messages of at most one piece each, then its header
alone; the receiver keeps what a peer carried ahead and puts it back in front of that peer's
next message.

Why: libzmq delivers a multipart message only once all of it has arrived, and a peer's
heartbeats queue behind it on the same connection. A gibibyte over a keyed link takes longer
than the silence after which either side declares the other lost; carried ahead, it arrives
piece after piece, and each piece shows its sender is alive.
"""

from __future__ import annotations

from typing import Any

import msgpack

from distrib._errors import ProtocolError
from distrib.wire import _messages as m
from distrib.wire._limits import MAX_CARRIED

HEADER = msgpack.packb([m.Carry.TAG])  # a Carry's header: its tag, no fields


def split(frames: list[Any], piece: int) -> list[list[Any]]:
    """The messages that send ``frames`` (a header, then payload frames of at most ``piece``
    bytes): as they are, or, when the payload is more than one piece, its frames carried
    ahead (as many in each ``Carry`` as fit in one piece) and the header last."""
    if len(frames) < 3:  # (a header alone, or one frame of at most a piece)
        return [frames]
    sizes = [memoryview(f).nbytes for f in frames[1:]]
    if sum(sizes) <= piece:
        return [frames]
    out: list[list[Any]] = []
    carry: list[Any] = [HEADER]
    size = 0
    for frame, n in zip(frames[1:], sizes):
        if len(carry) > 1 and size + n > piece:
            out.append(carry)
            carry, size = [HEADER], 0
        carry.append(frame)
        size += n
    return [*out, carry, [frames[0]]]


def carries(payload: int, piece: int) -> int:
    """At most how many ``Carry`` messages a payload of ``payload`` bytes takes (every two in
    a row hold more than one piece)."""
    return 2 * (payload // piece) + 1


class Carried:
    """Per peer (its routing id; ``b""`` on a socket with one peer), the payload frames it
    carried ahead of its next message."""

    def __init__(self) -> None:
        self._ahead: dict[bytes, tuple[int, list[Any]]] = {}  # (Carry messages, frames)

    def take(self, frames: list[Any], peer: bytes = b"") -> list[Any] | None:
        """The frames of a whole message, header first: ``frames`` with what ``peer`` carried
        ahead in front of its payload; None for a ``Carry`` (kept until its message comes).
        Raises ``ProtocolError`` when a peer sends more than ``MAX_CARRIED`` of them ahead of
        one message."""
        if len(frames) >= 2 and len(frames[0]) == len(HEADER) and _bytes(frames[0]) == HEADER:
            count, ahead = self._ahead.get(peer) or (0, [])
            if count >= MAX_CARRIED:
                del self._ahead[peer]
                raise ProtocolError(f"more than {MAX_CARRIED} Carry messages ahead of a message")
            ahead.extend(frames[1:])
            self._ahead[peer] = (count + 1, ahead)
            return None
        if peer not in self._ahead:
            return frames
        return [frames[0], *self._ahead.pop(peer)[1], *frames[1:]]

    def forget(self, peer: bytes = b"") -> None:
        """``peer`` left: what it carried ahead goes."""
        self._ahead.pop(peer, None)


def _bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)

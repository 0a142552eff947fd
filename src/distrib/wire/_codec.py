"""Message <-> frames, with no sockets: ``encode(message)`` and ``decode(frames)``.

msgspec does both in C, from the messages' declared types (``_messages``): ``decode`` checks the
type tag, the field count and every field's type as it builds the message, then the payload's
frame count and the names it carries, and raises only ``ProtocolError`` (naming the message and
the field at fault), whatever the bytes.
"""

from __future__ import annotations

import operator
import typing
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from distrib._errors import ProtocolError
from distrib.wire import _messages as m
from distrib.wire._explain import explain
from distrib.wire._kinds import OBJECT_NAME, SHM_NAME
from distrib.wire._limits import MAX_HEADER_BYTES, MAX_MESSAGE_BYTES, MAX_OBJECTS


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """The values of ``names`` of a message, as a tuple (``attrgetter`` of one name gives the
    value, of none is not a function)."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    if names:
        get = operator.attrgetter(names[0])
        return lambda message: (get(message),)
    return lambda message: ()


# Each message type's tag and the getter of its header fields (all but ``pieces`` and
# ``frames``, which end every message's fields); and by tag, its type and field names.
_HEADS: dict[type[m.Message], tuple[int, Callable[[Any], tuple[Any, ...]]]] = {}
_FIELDS: dict[int, tuple[type[m.Message], tuple[str, ...]]] = {}
for _cls in m.ALL_MESSAGES:
    _names = _cls.__struct_fields__[:-2]
    _HEADS[_cls] = _cls.TAG, _getter(_names)
    _FIELDS[_cls.TAG] = _cls, _names
del _cls, _names
assert len(_FIELDS) == len(m.ALL_MESSAGES), "duplicate message tag"
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(typing.Union[m.ALL_MESSAGES])
_set = msgspec.structs.force_setattr  # (on a message just decoded, seen by none)


def encode(message: m.Message, max_frame: int = MAX_MESSAGE_BYTES) -> list[Any]:
    """Return the frames of ``message``: its msgpack header, then its payload frames.

    A payload frame larger than ``max_frame`` (the receiver's limit) travels as pieces of at
    most that size, without copies; the header then ends with one more element, the list of
    ``[frame index, pieces]`` that ``decode`` joins back."""
    tag, fields = _HEADS[type(message)]
    frames = message.frames
    if frames and any(memoryview(f).nbytes > max_frame for f in frames):
        cut: list[Any] = []
        pieces = []
        for i, frame in enumerate(frames):
            view = memoryview(frame).cast("B")
            if view.nbytes <= max_frame:
                cut.append(frame)
                continue
            parts = [view[at:at + max_frame] for at in range(0, view.nbytes, max_frame)]
            pieces.append((i, len(parts)))
            cut.extend(parts)
        return [_ENCODER.encode((tag, *fields(message), pieces)), *cut]
    return [_ENCODER.encode((tag, *fields(message))), *frames]


def decode(frames: Sequence[Any]) -> m.Message:
    """Parse and validate frames into a message; raise ``ProtocolError`` on anything wrong.

    A payload frame sent in pieces is joined into a ``bytearray``; a ``frames`` list then
    loses its payload frames, so that each piece is released once it is copied (a joined
    payload needs about its size once, and one piece, more)."""
    if not frames:
        raise ProtocolError("empty message")
    raw = frames[0]
    try:
        head = memoryview(raw.buffer if hasattr(raw, "buffer") else raw)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"unreadable header frame: {exc}") from None
    if head.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {head.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        message: m.Message = _DECODER.decode(head)
    except msgspec.ValidationError as exc:
        raise ProtocolError(explain(head, str(exc), _FIELDS, "message type",
                                    optional=1)) from None
    except msgspec.MsgspecError as exc:
        raise ProtocolError(f"header is not valid msgpack: {exc}") from None
    if len(frames) > 1:
        payload = list(frames[1:])
        if message.pieces:  # frames sent in pieces: join them
            if isinstance(frames, list):
                del frames[1:]  # (so that each piece is released as soon as it is copied)
            payload = _join(type(message).__name__, message.pieces, payload)
        _set(message, "frames", tuple(payload))
    elif message.pieces:
        raise ProtocolError(f"{type(message).__name__}: fewer frames than its pieces need")
    if message.pieces:
        _set(message, "pieces", ())
    _check_frames(message)
    return message


def _join(name: str, pieces: m.Pieces, frames: list[Any]) -> list[Any]:
    """The payload frames, with those sent in pieces (``[[frame index, pieces], ...]`` in
    increasing order, each of at least two: as msgspec checked) joined."""
    out: list[Any] = []
    at = 0
    for item in pieces:
        if item[0] < len(out):
            raise ProtocolError(f"{name}: bad entry {list(item)!r} in the frames sent in pieces")
        index, count = item
        skip = index - len(out)
        if at + skip + count > len(frames):
            raise ProtocolError(f"{name}: fewer frames than its pieces need")
        out.extend(frames[at:at + skip])
        at += skip
        views = [memoryview(f.buffer if hasattr(f, "buffer") else f).cast("B")
                 for f in frames[at:at + count]]
        joined = bytearray(sum(v.nbytes for v in views))
        views.reverse()
        end = 0
        for k in range(count):  # (each piece goes as soon as it is copied)
            view = views.pop()
            frames[at + k] = None
            joined[end:end + view.nbytes] = view
            end += view.nbytes
            view.release()
            if k % _GIVE_BACK_EVERY == _GIVE_BACK_EVERY - 1:
                _give_back()
        out.append(joined)
        at += count
    return out + frames[at:]


# Pieces of 1 MiB are allocated (by libzmq) from malloc's heap, not mapped one by one as
# larger ones are, and the heap keeps what is freed: while a gibibyte is joined, its pieces
# already copied are handed back to the system every 32 of them, or the process would hold
# the payload twice.
_GIVE_BACK_EVERY = 32
_trim: Callable[[int], object] | None = None


def _give_back() -> None:
    global _trim
    if _trim is None:
        try:
            import ctypes

            _trim = ctypes.CDLL(None).malloc_trim  # (glibc's)
        except (OSError, AttributeError):  # (another C library: it keeps what it keeps)
            _trim = lambda pad: None  # noqa: E731
    _trim(0)


def _check_frames(message: m.Message) -> None:
    n = len(message.frames)
    expected: int | None
    if isinstance(message, m.Submit):
        expected = 0
        for t in message.tasks:  # (one pass: a batch holds up to 512 tasks)
            count = t.nframes
            if count < 0 or len(t.inline) + count < 1 or t.threads < 1:
                raise ProtocolError("Submit: every task needs a payload and at least one thread")
            expected += count
            if t.objects:
                _check_objects(t.objects, f"Submit: task {t.task_id}")
            if t.shm:
                _check_shm(t.shm, len(t.inline) + count, f"Submit: task {t.task_id}")
    elif isinstance(message, m.Results):
        expected = 0
        for r in message.results:
            count = r.nframes
            if count < 0:
                raise ProtocolError("Results: negative frame count")
            expected += count
            if r.shm:
                _check_shm(r.shm, len(r.inline) + count, f"Results: task {r.task_id}")
    elif isinstance(message, (m.Call, m.ChildResult)):
        expected = n  # (its payload: any number of frames)
        if isinstance(message, m.Call) and (n < 1 or message.threads < 1 or message.retries < 0
                                            or len(message.platforms) > 64):
            raise ProtocolError("Call: a payload, at least one thread, no negative retries")
    elif isinstance(message, m.Blobs):
        expected = len(message.hashes)
    elif isinstance(message, m.Manifest):
        expected = 1
    elif isinstance(message, m.Carry):
        expected = max(1, n)
    elif isinstance(message, m.Objects):
        files = message.files or [""] * len(message.names)
        if len(message.counts) != len(message.names) or len(files) != len(message.names) or any(
                (c != 0 or not SHM_NAME.fullmatch(f)) if f else c < 1
                for c, f in zip(message.counts, files)):
            raise ProtocolError("Objects: one positive frame count per object, or 0 and the "
                                "name of its file in /dev/shm")
        _check_objects(dict.fromkeys(message.names, 0), "Objects")
        expected = sum(message.counts)
    else:
        expected = 0
    if n != expected:
        raise ProtocolError(f"{type(message).__name__}: expected {expected} payload frames, got {n}")


def _check_objects(objects: dict[str, int], where: str) -> None:
    if len(objects) > MAX_OBJECTS or any(
            not OBJECT_NAME.fullmatch(k) or n < 0 for k, n in objects.items()):
        raise ProtocolError(f"{where}: bad shared objects (at most {MAX_OBJECTS}, named by "
                            "32 hex digits)")


def _check_shm(shm: dict[str, int], frames: int, where: str) -> None:
    if len(shm) > MAX_OBJECTS or any(not SHM_NAME.fullmatch(k) or not 0 <= i < frames
                                     for k, i in shm.items()):
        raise ProtocolError(f"{where}: bad shared-memory frames")

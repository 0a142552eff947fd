"""Message <-> frames, with no sockets: ``encode(message)`` and ``decode(frames)``.

``decode`` validates everything it returns (type tag, field count, every field's type, payload
frame counts) and raises only ``ProtocolError``, whatever the bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from distrib._errors import ProtocolError
from distrib.wire import _messages as m
from distrib.wire._limits import MAX_HEADER_BYTES, MAX_MESSAGE_BYTES, MAX_OBJECTS

_Check = Callable[[Any], Any]
OBJECT_NAME = re.compile(r"[0-9a-f]{32}")  # a shared object's name: the hash of its frames
# a frame's file in /dev/shm: distrib-<the Main's pid>-<random or "probe">
SHM_NAME = re.compile(r"distrib-([0-9]{1,10})-[0-9a-z]{1,40}")


def _checker(tp: Any) -> _Check:
    """Build a function that validates (and for nested records, converts) one field value."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return lambda v: v
    if tp is bool:
        return lambda v: _expect(v, isinstance(v, bool), "bool")
    if tp is int:
        return lambda v: _expect(v, isinstance(v, int) and not isinstance(v, bool), "int")
    if tp is float:
        return lambda v: _expect(
            float(v), isinstance(v, (int, float)) and not isinstance(v, bool), "float"
        )
    if isinstance(tp, type) and issubclass(tp, enum.StrEnum):
        return lambda v: _member(tp, v)
    if tp is str:
        return lambda v: _expect(v, isinstance(v, str), "str")
    if tp is bytes:
        return lambda v: _expect(v, isinstance(v, bytes), "bytes")
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _checker(args[0])
        return lambda v: None if v is None else inner(v)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        item = _checker(item_tp)

        def check_list(v: Any) -> list[Any]:
            if not isinstance(v, list):
                raise ProtocolError(f"expected a list, got {type(v).__name__}")
            return [item(x) for x in v] if v else v

        return check_list
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        key, val = _checker(key_tp), _checker(val_tp)

        def check_dict(v: Any) -> dict[Any, Any]:
            if not isinstance(v, dict):
                raise ProtocolError(f"expected a map, got {type(v).__name__}")
            return {key(k): val(x) for k, x in v.items()} if v else v

        return check_dict
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _record_checker(tp)
    raise TypeError(f"no wire checker for {tp!r}")  # a bug in _messages, found at import


def _expect(value: Any, ok: bool, what: str) -> Any:
    if not ok:
        raise ProtocolError(f"expected {what}, got {type(value).__name__}")
    return value


def _member(kind: type[enum.StrEnum], value: Any) -> enum.StrEnum:
    try:
        return kind(value)
    except ValueError:
        raise ProtocolError(f"unknown {kind.__name__} {value!r}") from None


def _fields(cls: type) -> list[tuple[str, _Check]]:
    hints = typing.get_type_hints(cls)
    return [
        (f.name, _checker(hints[f.name])) for f in dataclasses.fields(cls) if f.name != "frames"
    ]


def _record_checker(cls: type) -> _Check:
    fields = _fields(cls)

    def check(v: Any) -> Any:
        if not isinstance(v, list) or len(v) != len(fields):
            raise ProtocolError(f"{cls.__name__}: expected {len(fields)} fields")
        return cls(*[chk(x) for (_, chk), x in zip(fields, v)])

    return check


_BY_TAG: dict[int, tuple[type[m.Message], list[tuple[str, _Check]]]] = {
    cls.TAG: (cls, _fields(cls)) for cls in m.ALL_MESSAGES
}
assert len(_BY_TAG) == len(m.ALL_MESSAGES), "duplicate message tag"


_RECORD_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls))
                  for cls in (m.TaskSpec, m.ResultSpec)}


def _plain(value: Any) -> Any:
    names = _RECORD_FIELDS.get(type(value))
    if names is not None:
        return [getattr(value, n) for n in names]  # records hold no records: flat is enough
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def encode(message: m.Message, max_frame: int = MAX_MESSAGE_BYTES) -> list[Any]:
    """Return the frames of ``message``: its msgpack header, then its payload frames.

    A payload frame larger than ``max_frame`` (the receiver's limit) travels as pieces of at
    most that size, without copies; the header then ends with one more element, the list of
    ``[frame index, pieces]`` that ``decode`` joins back."""
    _, fields = _BY_TAG[message.TAG]
    header = [message.TAG, *(_plain(getattr(message, name)) for name, _ in fields)]
    frames: list[Any] = list(message.frames)
    if any(memoryview(f).nbytes > max_frame for f in frames):
        cut: list[Any] = []
        pieces = []
        for i, frame in enumerate(frames):
            view = memoryview(frame).cast("B")
            if view.nbytes <= max_frame:
                cut.append(frame)
                continue
            parts = [view[at:at + max_frame] for at in range(0, view.nbytes, max_frame)]
            pieces.append([i, len(parts)])
            cut.extend(parts)
        header.append(pieces)
        frames = cut
    return [msgpack.packb(header), *frames]


def decode(frames: Sequence[Any]) -> m.Message:
    """Parse and validate frames into a message; raise ``ProtocolError`` on anything wrong.

    A payload frame sent in pieces is joined into a ``bytearray``; a ``frames`` list then
    loses its payload frames, so that each piece is released once it is copied (a joined
    payload needs about its size once, and one piece, more)."""
    if not frames:
        raise ProtocolError("empty message")
    raw = frames[0]
    try:
        header_bytes = bytes(raw.buffer if hasattr(raw, "buffer") else raw)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"unreadable header frame: {exc}") from None
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(header_bytes)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(header_bytes, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types on bad input; all mean the same
        raise ProtocolError(f"header is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(header, list) or not header:
        raise ProtocolError("header is not a non-empty array")
    tag = header[0]
    if not isinstance(tag, int) or isinstance(tag, bool) or tag not in _BY_TAG:
        raise ProtocolError(f"unknown message type {tag!r}")
    cls, fields = _BY_TAG[tag]
    payload = list(frames[1:])
    if len(header) - 1 == len(fields) + 1:  # frames sent in pieces: join them
        if isinstance(frames, list):
            del frames[1:]  # (so that each piece is released as soon as it is copied)
        payload = _join(cls.__name__, header.pop(), payload)
    if len(header) - 1 != len(fields):
        raise ProtocolError(f"{cls.__name__}: expected {len(fields)} fields, got {len(header) - 1}")
    try:
        values = {name: chk(v) for (name, chk), v in zip(fields, header[1:])}
    except ProtocolError as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"{cls.__name__}: bad field: {exc}") from None
    message = cls(**values, frames=tuple(payload))
    _check_frames(message)
    return message


def _join(name: str, pieces: Any, frames: list[Any]) -> list[Any]:
    """The payload frames, with those sent in pieces (``[[frame index, pieces], ...]`` in
    increasing order) joined."""
    if not isinstance(pieces, list) or not pieces:
        raise ProtocolError(f"{name}: bad list of frames sent in pieces")
    out: list[Any] = []
    at = 0
    for item in pieces:
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
                or item[1] < 2 or item[0] < len(out)):
            raise ProtocolError(f"{name}: bad entry {item!r} in the frames sent in pieces")
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
        out.append(joined)
        at += count
    return out + frames[at:]


def _check_frames(message: m.Message) -> None:
    n = len(message.frames)
    expected: int | None
    if isinstance(message, m.Submit):
        expected = sum(t.nframes for t in message.tasks)
        if any(t.nframes < 0 or len(t.inline) + t.nframes < 1 or t.threads < 1
               for t in message.tasks):
            raise ProtocolError("Submit: every task needs a payload and at least one thread")
        for t in message.tasks:
            if t.objects:
                _check_objects(t.objects, f"Submit: task {t.task_id}")
            if t.shm:
                _check_shm(t.shm, len(t.inline) + t.nframes, f"Submit: task {t.task_id}")
    elif isinstance(message, m.Results):
        expected = sum(r.nframes for r in message.results)
        if any(r.nframes < 0 for r in message.results):
            raise ProtocolError("Results: negative frame count")
        for r in message.results:
            if r.shm:
                _check_shm(r.shm, len(r.inline) + r.nframes, f"Results: task {r.task_id}")
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

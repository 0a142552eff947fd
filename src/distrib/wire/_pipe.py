"""Messages between the daemon and an executor over a socketpair, with few syscalls and copies.

A message (``_pipe_messages``) travels as a msgpack header (a list: its verb, then its fields)
and zero or more payload frames. On the wire:

    <u32 header length> <u32 frame count> <u64 length per frame> <header> <frames...>

sent with one ``sendmsg`` (scatter-gather: frames are not joined first; several messages can
share the call) and read through a 64 KiB buffer, so a burst of small messages costs one read.
Large frames are received straight into buffers sized in advance: they move once each way.

``encode`` and ``decode`` turn a message into its header and frames and back; ``decode``
checks the verb, the field count and every field's type, and raises only ``PipeError``. Each
message type's encoder and decoder are built once, at import.
"""

from __future__ import annotations

import dataclasses
import operator
import select
import socket
import struct
import typing
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from distrib._errors import ProtocolError
from distrib.wire import _pipe_messages as pm
from distrib.wire._limits import PIPE_MAX_FRAMES, PIPE_MAX_HEADER
from distrib.wire._messages import Outcome
from distrib.wire._pipe_messages import PipeMessage

# The environment an executor starts with: thread counts of the task's libraries, and the
# niceness it takes first thing (and drops from its environment).
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
NICE_VAR = "DISTRIB_EXECUTOR_NICE"

_PREFIX = struct.Struct("<II")
_CHUNK = 1 << 16
_INT31 = 1 << 31


class PipeError(ProtocolError):
    """A message on an executor's pipe does not follow its protocol (the pipe's framing is
    intact: the next message can be read)."""


# --- field checks (one function per field type, picked once per message type) ------------------

_Check = Callable[[Any], Any]


def _int(v: Any) -> int:
    if type(v) is not int:  # (msgpack gives exact ints; a bool is not one)
        raise PipeError(f"expected int, got {type(v).__name__}")
    return v


def _str(v: Any) -> str:
    if type(v) is not str:
        raise PipeError(f"expected str, got {type(v).__name__}")
    return v


def _seconds(v: Any) -> float | None:
    if v is not None and type(v) is not float and type(v) is not int:
        raise PipeError(f"expected a number or nil, got {type(v).__name__}")
    return v


def _strs(v: Any) -> list[str]:
    if type(v) is not list:
        raise PipeError(f"expected a list of str, got {type(v).__name__}")
    for x in v:  # (a loop: cheaper than all() on the few items these have)
        if type(x) is not str:
            raise PipeError(f"expected a list of str, got a {type(x).__name__} in it")
    return v


def _str_map(v: Any) -> dict[str, str]:
    if type(v) is not dict:
        raise PipeError(f"expected a map of str to str, got {type(v).__name__}")
    for k, x in v.items():
        if type(k) is not str or type(x) is not str:
            raise PipeError("expected a map of str to str")
    return v


def _int_map(v: Any) -> dict[str, int]:
    if type(v) is not dict:
        raise PipeError(f"expected a map of str to int, got {type(v).__name__}")
    for k, x in v.items():
        if type(k) is not str or type(x) is not int:
            raise PipeError("expected a map of str to int")
    return v


_OUTCOMES = {outcome.value: outcome for outcome in Outcome}


def _outcome(v: Any) -> Outcome:
    found = _OUTCOMES.get(v) if type(v) is str else None
    if found is None:
        raise PipeError(f"unknown outcome {v!r}")
    return found


_CHECKS: dict[Any, _Check] = {
    int: _int, str: _str, float | None: _seconds, list[str]: _strs,
    dict[str, str]: _str_map, dict[str, int]: _int_map, Outcome: _outcome,
}
# The one Python type a field of each type unpacks to (a union has none), and what to check
# inside it (or convert) once that type is right.
_KINDS: dict[Any, type] = {int: int, str: str, list[str]: list, dict[str, str]: dict,
                           dict[str, int]: dict, Outcome: str}
_INSIDE: dict[Any, _Check] = {list[str]: _strs, dict[str, str]: _str_map,
                              dict[str, int]: _int_map, Outcome: _outcome}


def _check_call(call: pm.Call) -> None:
    if not (all(0 <= x < _INT31 for x in (call.child, call.threads, call.retries))
            and call.threads >= 1 and len(call.platforms) <= 64 and len(call.outputs) <= 256
            and call.redistribution in ("", "auto", "relayed", "direct")):
        raise PipeError("Call: a call number, threads or retries out of range, too many "
                        "platforms or outputs, or an unknown redistribution")


_AFTER: dict[type[PipeMessage], Callable[[Any], None]] = {pm.Call: _check_call}

_Encoder = Callable[[Any], list[Any]]
_Decoder = Callable[[list[Any], list[Any]], PipeMessage]


def _codec(cls: type[PipeMessage]) -> tuple[_Encoder, _Decoder]:
    """The encoder and decoder of one message type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "frames"]
    types = [hints[name] for name in names]
    checks = [_CHECKS[tp] for tp in types]  # (a KeyError here: a new field type)
    # The fast path: every field's Python type compared at once, then what is inside the
    # containers (and the enums) checked; any field of a union type takes the slow one.
    kinds = tuple(_KINDS[tp] for tp in types) if all(tp in _KINDS for tp in types) else None
    inside = [(i, _INSIDE[tp]) for i, tp in enumerate(types) if tp in _INSIDE]
    framed = "frames" in hints
    verb, count, label = cls.VERB.value, len(names), cls.__name__
    after = _AFTER.get(cls)
    if count == 1:
        get = operator.attrgetter(names[0])

        def encode(message: Any) -> list[Any]:
            return [verb, get(message)]
    else:
        get_all = operator.attrgetter(*names)

        def encode(message: Any) -> list[Any]:
            return [verb, *get_all(message)]

    def decode(header: list[Any], frames: list[Any]) -> PipeMessage:
        values = header[1:]
        if len(values) != count:
            raise PipeError(f"{label}: expected {count} fields, got {len(values)}")
        try:
            if kinds is not None and tuple(map(type, values)) == kinds:
                for i, check in inside:
                    values[i] = check(values[i])
            else:  # (each field checked on its own, saying which is wrong)
                values = [check(v) for check, v in zip(checks, values)]
        except PipeError as exc:
            raise PipeError(f"{label}: {exc}") from None
        if framed:
            message = cls(*values, tuple(frames))  # type: ignore[call-arg]
        elif frames:
            raise PipeError(f"{label}: expected no payload, got {len(frames)} frames")
        else:
            message = cls(*values)
        if after is not None:
            after(message)
        return message

    return encode, decode


_ENCODERS: dict[type[PipeMessage], _Encoder] = {}
_DECODERS: dict[str, _Decoder] = {}
for _cls in pm.ALL_MESSAGES:
    _ENCODERS[_cls], _DECODERS[_cls.VERB.value] = _codec(_cls)
del _cls
assert len(_DECODERS) == len(pm.ALL_MESSAGES), "duplicate verb"


def encode(message: PipeMessage) -> tuple[list[Any], Sequence[Any]]:
    """The header (a plain list, for msgpack) and payload frames of ``message``."""
    return _ENCODERS[type(message)](message), getattr(message, "frames", ())


def decode(header: Any, frames: list[Any]) -> PipeMessage:
    """The message of an unpacked ``header`` and its ``frames``; ``PipeError`` if they do not
    make one (whatever they are)."""
    if type(header) is not list or not header:
        raise PipeError("the header is not a non-empty list")
    verb = header[0]
    decoder = _DECODERS.get(verb) if type(verb) is str else None
    if decoder is None:
        raise PipeError(f"unknown verb {verb!r}")
    return decoder(header, frames)


class Pipe:
    """One end of an executor's socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(True)
        self._buf = bytearray()  # read ahead, not yet consumed from _pos on
        self._pos = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def buffered(self) -> bool:
        """Whether bytes already read ahead are waiting (a poll on the socket won't say)."""
        return self._pos < len(self._buf)

    def readable(self) -> bool:
        """Whether a message (or the peer's closing) is waiting to be read."""
        return self.buffered() or bool(select.select([self.sock], [], [], 0)[0])

    def send(self, message: PipeMessage) -> None:
        """Send one message; blocks until the kernel has taken all of it."""
        self.send_many((message,))

    def send_many(self, messages: Sequence[PipeMessage]) -> None:
        """Send several messages with one system call (when the kernel takes them at once)."""
        parts: list[Any] = []
        for message in messages:
            header, frames = encode(message)
            head = msgpack.packb(header)
            views = [memoryview(f.buffer if hasattr(f, "buffer") else f).cast("B")
                     for f in frames]  # (a zmq frame lends its bytes through .buffer)
            parts += [_PREFIX.pack(len(head), len(views)),
                      struct.pack(f"<{len(views)}Q", *(v.nbytes for v in views)), head, *views]
        total = sum(memoryview(p).nbytes for p in parts)
        sent = self.sock.sendmsg(parts)
        if sent < total:  # a large message: finish what the kernel did not take at once
            self._send_rest(parts, sent)

    def _send_rest(self, parts: list[Any], sent: int) -> None:
        for part in parts:
            view = memoryview(part).cast("B")
            if sent >= view.nbytes:
                sent -= view.nbytes
                continue
            self.sock.sendall(view[sent:])
            sent = 0

    def recv(self) -> PipeMessage:
        """One message. ``EOFError`` if the peer is gone or breaks framing; ``PipeError`` if
        the message is malformed (it was read whole: the next one can be)."""
        head_len, count = _PREFIX.unpack(self._read(_PREFIX.size))
        if count > PIPE_MAX_FRAMES or head_len > PIPE_MAX_HEADER:
            raise EOFError("malformed message on an executor pipe")
        sizes = struct.unpack(f"<{count}Q", self._read(8 * count)) if count else ()
        head = self._read(head_len)
        frames = [self._read(size) for size in sizes]
        try:
            header = msgpack.unpackb(head, raw=False)
        except Exception as exc:  # msgpack raises many types on bad input; all mean the same
            raise PipeError(f"the header is not valid msgpack: {type(exc).__name__}") from None
        return decode(header, frames)

    def _read(self, size: int) -> bytearray:
        out = bytearray(size)
        view = memoryview(out)
        got = 0
        while got < size:
            if self._pos < len(self._buf):  # from what was read ahead
                take = min(size - got, len(self._buf) - self._pos)
                view[got:got + take] = self._buf[self._pos:self._pos + take]
                self._pos += take
                got += take
                if self._pos == len(self._buf):
                    self._buf, self._pos = bytearray(), 0
            elif size - got >= _CHUNK:  # a large frame: straight into its buffer
                n = self.sock.recv_into(view[got:])
                if n == 0:
                    raise EOFError("executor pipe closed")
                got += n
            else:
                chunk = self.sock.recv(_CHUNK)
                if not chunk:
                    raise EOFError("executor pipe closed")
                self._buf += chunk
        return out

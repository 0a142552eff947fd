"""Messages between the daemon and an executor over a socketpair, with few syscalls and copies.

A message (``_pipe_messages``) travels as a msgpack header (a list: its verb, then its fields)
and zero or more payload frames. On the wire:

    <u32 header length> <u32 frame count> <u64 length per frame> <header> <frames...>

sent with one ``sendmsg`` (scatter-gather: frames are not joined first; several messages can
share the call) and read through a 64 KiB buffer, so a burst of small messages costs one read.
Large frames are received straight into buffers sized in advance: they move once each way.

``encode`` and ``decode`` turn a message into its header's bytes and frames and back. msgspec
does both in C, from the messages' declared types: ``decode`` checks the verb, the field count,
every field's type and bound as it builds the message, and raises only ``PipeError``, which
names the message and the field at fault. An executor of another Python version has no msgspec
(the worker's is compiled for its own Python): it uses ``_pipe_plain``, the same bytes.
"""

from __future__ import annotations

import enum
import operator
import re
import select
import socket
import struct
import time
import typing
from collections.abc import Callable, Sequence
from typing import Any

from distrib._errors import ProtocolError
from distrib.wire import _pipe_messages as pm
from distrib.wire import _pipe_plain
from distrib.wire._explain import explain
from distrib.wire._limits import PIPE_MAX_FRAMES, PIPE_MAX_HEADER
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
_SLICE = 4 << 20  # bytes of a large message sent with one call (``Pipe.during`` between)
LONG_IO = 1.0  # seconds into one large message after which ``Pipe.during`` is called


class PipeError(ProtocolError):
    """A message on an executor's pipe does not follow its protocol (the pipe's framing is
    intact: the next message can be read)."""


try:
    import msgspec
except ImportError:  # an executor of another Python version (see _pipe_plain)
    msgspec = None  # type: ignore[assignment]


def _one_field(name: str) -> Callable[[Any], tuple[Any, ...]]:
    """The getter of one field, as a tuple (``attrgetter`` of one name gives the value)."""
    get = operator.attrgetter(name)
    return lambda message: (get(message),)


# A message with a payload is encoded as a tuple of its verb and header fields (its frames
# left out); any other is its struct as it is.
_HEADS: dict[type[PipeMessage], tuple[str, Callable[[Any], tuple[Any, ...]]]] = {}
# Each message type's header fields, by verb, for explaining what does not decode.
_FIELDS: dict[str, tuple[type[PipeMessage], tuple[str, ...]]] = {}
for _cls in pm.ALL_MESSAGES:
    _names = tuple(name for name in _cls.__struct_fields__ if name != "frames")
    _FIELDS[_cls.VERB.value] = _cls, _names
    if "frames" in _cls.__struct_fields__:
        _HEADS[_cls] = _cls.VERB.value, (
            operator.attrgetter(*_names) if len(_names) > 1 else _one_field(_names[0]))
del _cls, _names


if msgspec is not None:
    _ENCODER = msgspec.msgpack.Encoder()
    _DECODER = msgspec.msgpack.Decoder(PipeMessage)
    _set_frames = msgspec.structs.force_setattr  # (on a message just decoded, seen by none)

    def encode(message: PipeMessage) -> tuple[bytes, Sequence[Any]]:
        """The msgpack header and the payload frames of ``message``."""
        head = _HEADS.get(type(message))
        if head is None:
            return _ENCODER.encode(message), ()
        verb, fields = head
        frames = message.frames  # type: ignore[union-attr]
        return _ENCODER.encode((verb, *fields(message))), frames

    def decode(head: bytes | bytearray, frames: list[Any]) -> PipeMessage:
        """The message of a msgpack ``head`` and its ``frames``; ``PipeError`` if they do not
        make one (whatever they are)."""
        try:
            message: PipeMessage = _DECODER.decode(head)
        except msgspec.ValidationError as exc:
            raise PipeError(explain(head, str(exc), _FIELDS, "verb")) from None
        except msgspec.DecodeError as exc:
            raise PipeError(f"the header is not valid msgpack: {exc}") from None
        if frames:
            if type(message) not in _HEADS:
                raise PipeError(f"{type(message).__name__}: expected no payload, got "
                                f"{len(frames)} frames")
            _set_frames(message, "frames", tuple(frames))
        return message
else:
    _VERBS = {cls.VERB.value: cls for cls in pm.ALL_MESSAGES}

    def encode(message: PipeMessage) -> tuple[bytes, Sequence[Any]]:
        """The msgpack header and the payload frames of ``message``."""
        return _pipe_plain.encode(message)

    def decode(head: bytes | bytearray, frames: list[Any]) -> PipeMessage:
        """The message of a msgpack ``head`` and its ``frames``; ``PipeError`` if they do not
        make one."""
        try:
            message: PipeMessage = _pipe_plain.decode(_VERBS, head, frames)
        except (ValueError, TypeError) as exc:
            raise PipeError(str(exc)) from None
        return message


class Pipe:
    """One end of an executor's socketpair."""

    # Called about once a second while one large message is sent or read (a gibibyte takes
    # seconds on loaded cores, and the daemon's loop is held meanwhile: its heartbeats go
    # out from here); None in executors.
    during: Callable[[], None] | None = None

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(True)
        self._buf = bytearray()  # read ahead, not yet consumed from _pos on
        self._pos = 0
        self._poller: Any = None  # (``wait``'s, made at its first wait)

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

    def wait(self) -> None:
        """Sleep until a message (or the peer's closing) is waiting to be read. A reader that
        sleeps in ``recv`` instead also wakes, and sleeps again, each time the peer reads
        what this end sent (that frees room for this end's writes, and the kernel wakes every
        sleeper on the socket for it): one wake-up more for each message exchanged."""
        if self.buffered():
            return
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self.sock, select.POLLIN)
        self._poller.poll()

    def send(self, message: PipeMessage) -> None:
        """Send one message; blocks until the kernel has taken all of it."""
        self.send_many((message,))

    def send_many(self, messages: Sequence[PipeMessage]) -> None:
        """Send several messages with one system call (when the kernel takes them at once)."""
        parts: list[Any] = []
        total = 0
        for message in messages:
            head, frames = encode(message)
            if not frames:
                parts += [_PREFIX.pack(len(head), 0), head]
                total += _PREFIX.size + len(head)
                continue
            views = [memoryview(f.buffer if hasattr(f, "buffer") else f).cast("B")
                     for f in frames]  # (a zmq frame lends its bytes through .buffer)
            sizes = [v.nbytes for v in views]
            parts += [_PREFIX.pack(len(head), len(views)), struct.pack(f"<{len(views)}Q", *sizes),
                      head, *views]
            total += _PREFIX.size + 8 * len(views) + len(head) + sum(sizes)
        if total > _SLICE and Pipe.during is not None:  # (a blocking sendmsg sends it all)
            self._send_rest(parts, 0)
            return
        sent = self.sock.sendmsg(parts)
        if sent < total:  # a large message: finish what the kernel did not take at once
            self._send_rest(parts, sent)

    def _send_rest(self, parts: list[Any], sent: int) -> None:
        due = time.monotonic() + LONG_IO
        for part in parts:
            view = memoryview(part).cast("B")
            while sent < view.nbytes:
                sent += self.sock.send(view[sent:sent + _SLICE])
                due = self._during(due)
            sent -= view.nbytes

    def _during(self, due: float) -> float:
        """Call ``during`` if ``due`` has passed; when it is due next."""
        during = Pipe.during  # (from the class: a function set there is not bound to self)
        if during is None or time.monotonic() < due:
            return due
        during()
        return time.monotonic() + LONG_IO

    def recv(self) -> PipeMessage:
        """One message. ``EOFError`` if the peer is gone or breaks framing; ``PipeError`` if
        the message is malformed (it was read whole: the next one can be)."""
        if self._pos == len(self._buf):  # (nothing read ahead: most messages come whole)
            chunk = self.sock.recv(_CHUNK)
            if not chunk:
                raise EOFError("executor pipe closed")
            self._buf, self._pos = bytearray(chunk), 0
        whole = self._whole()
        if whole is not None:
            return decode(*whole)
        head_len, count = _PREFIX.unpack(self._read(_PREFIX.size))
        if count > PIPE_MAX_FRAMES or head_len > PIPE_MAX_HEADER:
            raise EOFError("malformed message on an executor pipe")
        sizes = struct.unpack(f"<{count}Q", self._read(8 * count)) if count else ()
        head = self._read(head_len)
        frames = [self._read(size) for size in sizes]
        return decode(head, frames)

    def _whole(self) -> tuple[bytearray, list[Any]] | None:
        """The header and frames of the next message if it was read ahead whole, taken out of
        the buffer; None if not (nothing is taken then)."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < _PREFIX.size:
            return None
        head_len, count = _PREFIX.unpack_from(buf, pos)
        at = pos + _PREFIX.size + 8 * count
        if count > PIPE_MAX_FRAMES or head_len > PIPE_MAX_HEADER or at > len(buf):
            return None  # (the slow path reads it, or says what is wrong)
        sizes = struct.unpack_from(f"<{count}Q", buf, pos + _PREFIX.size) if count else ()
        if at + head_len + sum(sizes) > len(buf):
            return None
        head = buf[at:at + head_len]
        at += head_len
        frames: list[Any] = []
        for size in sizes:
            frames.append(buf[at:at + size])
            at += size
        if at == len(buf):
            self._buf, self._pos = bytearray(), 0
        else:
            self._pos = at
        return head, frames

    def _read(self, size: int) -> bytearray:
        out = bytearray(size)
        view = memoryview(out)
        got = 0
        due = 0.0  # (set once a large frame is read: most messages are small)
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
                due = self._during(due or time.monotonic() + LONG_IO)
            else:
                chunk = self.sock.recv(_CHUNK)
                if not chunk:
                    raise EOFError("executor pipe closed")
                self._buf += chunk
        return out

"""Messages between the daemon and an executor over a socketpair, with few syscalls and copies.

A message (``_pipe_messages``) travels as a msgpack header (a list: its verb, then its fields)
and zero or more payload frames. On the wire:

    <u32 header length> <u32 frame count> <u64 length per frame> <header> <frames...>

sent with one ``sendmsg`` (scatter-gather: frames are not joined first; several messages can
share the call) and read through a 64 KiB buffer, so a burst of small messages costs one read.
Large frames are received straight into buffers sized in advance: they move once each way.

An executor runs a Main's code, which can write to its end or stop reading it: the daemon,
whose one loop serves every Main, never waits on a pipe. It reads with ``receive`` (what has
come; a message is returned once all of it has) and writes with ``post`` (what the kernel takes
now; the rest waits in order for ``flush``). Executors, which may wait, use ``recv`` and
``send``.

``encode`` and ``decode`` turn a message into its header's bytes and frames and back. msgspec
does both in C, from the messages' declared types: ``decode`` checks the verb, the field count,
every field's type and bound as it builds the message, and raises only ``PipeError``, which
names the message and the field at fault. An executor of another Python version has no msgspec
(the worker's is compiled for its own Python): it uses ``_pipe_plain``, the same bytes.
"""

from __future__ import annotations

import mmap
import operator
import select
import socket
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from distrib._errors import ProtocolError
from distrib.wire import _pipe_messages as pm
from distrib.wire import _pipe_plain
from distrib.wire._explain import explain
from distrib.wire._limits import MAX_PAYLOAD_BYTES, PIPE_MAX_FRAMES, PIPE_MAX_HEADER
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
# A frame this large is received into memory mapped as it is filled: a header may claim any
# size, and only the bytes that come are held.
_MAPPED = 1 << 20
READ_BUDGET = 16 << 20  # bytes one ``receive`` reads at most (the daemon's other work waits)
_IOV = 512  # buffers per ``sendmsg`` (the kernel takes at most 1,024)


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

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(True)
        self._buf = bytearray()  # read ahead, not yet consumed from _pos on
        self._pos = 0
        self._poller: Any = None  # (``wait``'s, made at its first wait)
        # ``receive``'s message in progress: its header, then its frames as they fill
        # (``_got`` bytes of the last one), made one at a time as their bytes come
        self._head: bytes | None = None
        self._sizes: tuple[int, ...] = ()
        self._frames: list[memoryview] = []
        self._got = 0
        self._left: int | None = None  # bytes ``receive`` may still read from the socket
        self._out: deque[memoryview] = deque()  # ``post``'s bytes the kernel did not take yet

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def budget_left(self) -> int | None:
        """What the last ``receive`` left of its budget: 0 or less if it stopped there (more
        may have come), None if it had none."""
        return self._left

    def close(self) -> None:
        self.sock.close()

    def buffered(self) -> bool:
        """Whether bytes already read ahead are waiting (a poll on the socket won't say)."""
        return self._pos < len(self._buf)

    def readable(self) -> bool:
        """Whether a message (or the peer's closing) is waiting to be read."""
        return self.buffered() or self._poll(0)

    def wait(self) -> None:
        """Sleep until a message (or the peer's closing) is waiting to be read. A reader that
        sleeps in ``recv`` instead also wakes, and sleeps again, each time the peer reads
        what this end sent (that frees room for this end's writes, and the kernel wakes every
        sleeper on the socket for it): one wake-up more for each message exchanged."""
        if not self.buffered():
            self._sleep()

    def _sleep(self) -> None:
        """Sleep until the socket has bytes (or the peer closed it)."""
        self._poll(None)

    def _poll(self, timeout_ms: int | None) -> bool:
        # (poll, not select: a process may hold more than select's 1,024 descriptors)
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self.sock, select.POLLIN)
        return bool(self._poller.poll(timeout_ms))

    def send(self, message: PipeMessage) -> None:
        """Send one message; blocks until the kernel has taken all of it."""
        self.send_many((message,))

    def send_many(self, messages: Sequence[PipeMessage]) -> None:
        """Send several messages with one system call (when the kernel takes them at once);
        blocks until it has taken all of them."""
        parts = _parts(messages)
        sent = self.sock.sendmsg(parts)
        for part in parts:  # (a large message: finish what the kernel did not take at once)
            while sent < part.nbytes:
                sent += self.sock.send(part[sent:])
            sent -= part.nbytes

    def post(self, messages: Sequence[PipeMessage]) -> None:
        """Send several messages without waiting: what the kernel does not take now is kept,
        in order, for ``flush`` (``pending`` says whether any is). ``OSError`` if the peer
        is gone."""
        self._out.extend(_parts(messages))
        self.flush()

    @property
    def pending(self) -> bool:
        """Whether ``post`` kept bytes the kernel did not take yet (poll for writing)."""
        return bool(self._out)

    def flush(self) -> None:
        """Send what ``post`` kept, as far as the kernel takes it now."""
        out = self._out
        while out:
            try:
                sent = self.sock.sendmsg([out[i] for i in range(min(len(out), _IOV))], [],
                                         socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            while out and out[0].nbytes <= sent:  # (empty frames too)
                sent -= out.popleft().nbytes
            if sent:
                out[0] = out[0][sent:]

    def receive(self, budget: int | None = READ_BUDGET) -> PipeMessage | None:
        """The next message once all of it has come, reading only what is there (never
        waits), and at most about ``budget`` bytes from the socket (0: only what was read
        ahead; None: no bound); None until then (later calls read the rest). ``EOFError``
        and ``PipeError`` as ``recv``, and ``EOFError`` for a frame larger than any payload."""
        self._left = budget
        if self._head is None:
            whole = self._whole()
            while whole is None and not self._begin():
                if not self._more():
                    return None
                whole = self._whole()
            if whole is not None:
                return decode(*whole)
        if not self._fill():
            return None
        head, frames = self._head, self._frames
        assert head is not None
        self._head, self._frames, self._got = None, [], 0
        return decode(head, frames)

    def _more(self) -> bool:
        """Read ahead what has come (up to a chunk); False if nothing had, or ``receive``'s
        budget is spent."""
        if self._left is not None and self._left <= 0:
            return False
        try:
            chunk = self.sock.recv(_CHUNK, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        if not chunk:
            raise EOFError("executor pipe closed")
        if self._left is not None:
            self._left -= len(chunk)
        if self._pos == len(self._buf):
            self._buf, self._pos = bytearray(chunk), 0
            return True
        if self._pos:  # (what was taken goes first: a stream that never pauses would keep it)
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += chunk
        return True

    def _begin(self) -> bool:
        """If the next message's prefix, frame sizes and header were read ahead (and not its
        frames: else ``_whole`` took it), take them out of the buffer to fill its frames."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < _PREFIX.size:
            return False
        head_len, count = _PREFIX.unpack_from(buf, pos)
        if count > PIPE_MAX_FRAMES or head_len > PIPE_MAX_HEADER:
            raise EOFError("malformed message on an executor pipe")
        at = pos + _PREFIX.size + 8 * count
        if at + head_len > len(buf):
            return False
        sizes = struct.unpack_from(f"<{count}Q", buf, pos + _PREFIX.size) if count else ()
        if any(size > MAX_PAYLOAD_BYTES for size in sizes):
            raise EOFError(f"a message on an executor pipe has a frame of {max(sizes):,} "
                           "bytes, more than any payload")
        self._head, self._sizes = bytes(buf[at:at + head_len]), sizes
        self._pos = at + head_len
        return True

    def _fill(self) -> bool:
        """Fill the frames of the message begun, from what was read ahead, then from what has
        come (within ``receive``'s budget); True once all are full."""
        while True:
            frames = self._frames
            if not frames or self._got == frames[-1].nbytes:
                if len(frames) == len(self._sizes):
                    return True
                size = self._sizes[len(frames)]
                frames.append(memoryview(mmap.mmap(-1, size) if size >= _MAPPED
                                         else bytearray(size)).cast("B"))
                self._got = 0
                continue
            view, got = frames[-1], self._got
            if self._pos < len(self._buf):  # from what was read ahead
                take = min(view.nbytes - got, len(self._buf) - self._pos)
                view[got:got + take] = self._buf[self._pos:self._pos + take]
                self._pos += take
                self._got += take
                continue
            if self._left is not None and self._left <= 0:
                return False
            if view.nbytes - got < _CHUNK:  # (small: read ahead what follows it too)
                if not self._more():
                    return False
                continue
            try:
                n = self.sock.recv_into(view[got:], 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            if n == 0:
                raise EOFError("executor pipe closed")
            self._got += n
            if self._left is not None:
                self._left -= n

    def recv(self) -> PipeMessage:
        """One message (waits for all of it). ``EOFError`` if the peer is gone or breaks
        framing; ``PipeError`` if the message is malformed (it was read whole: the next one
        can be)."""
        while (message := self.receive(None)) is None:
            self._sleep()  # (not ``wait``: part of one may be read ahead)
        return message

    def _whole(self) -> tuple[bytearray, list[Any]] | None:
        """The header and frames of the next message if it was read ahead whole, taken out of
        the buffer; None if not (nothing is taken then)."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < _PREFIX.size:
            return None
        head_len, count = _PREFIX.unpack_from(buf, pos)
        at = pos + _PREFIX.size + 8 * count
        if count > PIPE_MAX_FRAMES or head_len > PIPE_MAX_HEADER or at > len(buf):
            return None  # (``_begin`` takes it as it comes, or says what is wrong)
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


def _parts(messages: Sequence[PipeMessage]) -> list[memoryview]:
    """The bytes of ``messages`` on the wire, as buffers to send in turn (frames not copied)."""
    parts: list[memoryview] = []
    for message in messages:
        head, frames = encode(message)
        if not frames:
            parts += [memoryview(_PREFIX.pack(len(head), 0)), memoryview(head)]
            continue
        views = [memoryview(f.buffer if hasattr(f, "buffer") else f).cast("B")
                 for f in frames]  # (a zmq frame lends its bytes through .buffer)
        parts += [memoryview(_PREFIX.pack(len(head), len(views))),
                  memoryview(struct.pack(f"<{len(views)}Q", *(v.nbytes for v in views))),
                  memoryview(head), *views]
    return parts

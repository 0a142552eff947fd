"""Messages between the daemon and an executor over a socketpair, with few syscalls and copies.

A message is a msgpack header (a list) and zero or more payload frames. On the wire:

    <u32 header length> <u32 frame count> <u64 length per frame> <header> <frames...>

sent with one ``sendmsg`` (scatter-gather: frames are not joined first; several messages can
share the call) and read through a 64 KiB buffer, so a burst of small messages costs one read.
Large frames are received straight into buffers sized in advance: they move once each way.
"""

from __future__ import annotations

import enum
import select
import socket
import struct
from collections.abc import Sequence
from typing import Any

import msgpack

from distrib.wire._limits import PIPE_MAX_FRAMES, PIPE_MAX_HEADER

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


class Verb(enum.StrEnum):
    """The first field of every message on an executor's pipe."""

    # daemon -> executor
    CONTEXT = "context"  # [CONTEXT, argv, variables]: first, the Main's sys.argv and variables
    # daemon -> zygote (an interpreter started ahead; see _pool.Zygote)
    BECOME = "become"  # [BECOME, mode, variables, cwd, arguments] + its socket
    RUN = "run"  # [RUN, key, objects, shm, pid] + call frames: run this task (several may
    # wait, in order); objects: the folder of its Main's shared objects, or ""; shm: its call
    # frames in /dev/shm (name -> index); pid: put large result frames in /dev/shm as that
    # Main's (0: do not)
    SKIP = "skip"  # [SKIP, key]: drop that task if it has not started
    CHILD = "child"  # [CHILD, key, child, status, record] + result or error frames: how the
    # call ``child`` of the running task ``key`` ended ("ok" or "error")
    # executor -> daemon
    READY = "ready"  # [READY, isolation]: the environment is imported ("overlay" or "copy")
    NOFORK = "nofork"  # [NOFORK, why]: a template that cannot fork executors safely
    SKIPPED = "skipped"  # [SKIPPED, key]: dropped, never started
    ENV_ERROR = "env_error"  # [ENV_ERROR, record] + error frames: the import failed; it exits
    OUT = "out"  # [OUT, key, stream, text]: a task's output line(s)
    DONE = "done"  # [DONE, key, outcome, record, shm] + result or error frames (shm: result
    # frames in /dev/shm)
    CALL = "call"  # [CALL, key, child, name, platforms, threads, retries, timeout, outputs,
    # redistribution ("": its Main's), the task's function] + call frames: the running task
    # called a @distributed function (its Main, or this worker, places the call)
    CANCEL_CHILD = "cancel_child"  # [CANCEL_CHILD, key, child]: it cancelled that call
    PARK = "park"  # [PARK, key]: it waits for its calls (its slots may go to other tasks)
    UNPARK = "unpark"  # [UNPARK, key]: it goes on


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

    def send(self, header: list[Any], frames: Sequence[Any] = ()) -> None:
        """Send one message; blocks until the kernel has taken all of it."""
        self.send_many([(header, frames)])

    def send_many(self, messages: Sequence[tuple[list[Any], Sequence[Any]]]) -> None:
        """Send several messages with one system call (when the kernel takes them at once)."""
        parts: list[Any] = []
        for header, frames in messages:
            head = msgpack.packb(header)
            views = [memoryview(f).cast("B") for f in frames]
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

    def recv(self) -> tuple[list[Any], list[Any]]:
        """One message: (header, frames). ``EOFError`` if the peer is gone or breaks framing."""
        head_len, count = _PREFIX.unpack(self._read(_PREFIX.size))
        if count > PIPE_MAX_FRAMES or head_len > PIPE_MAX_HEADER:
            raise EOFError("malformed message on an executor pipe")
        sizes = struct.unpack(f"<{count}Q", self._read(8 * count)) if count else ()
        header = msgpack.unpackb(self._read(head_len), raw=False)
        if not isinstance(header, list) or not header:
            raise EOFError("malformed message on an executor pipe")
        return header, [self._read(size) for size in sizes]

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

"""The hand-off from user threads to the Main's I/O thread, and what a call's large frames
need before they go: a place in /dev/shm.

User threads append calls and cancellations to the ``Inbox``'s deques and wake the I/O thread
with one byte on a socket pair it polls; only the I/O thread takes from them (``_loop``).
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from typing import Any

from distrib import _shared, _shm
from distrib.main._tracked import Task

log = logging.getLogger("distrib")

NONE: dict[str, int] = {}  # (no shared objects, no /dev/shm frames: one map, never changed)


class Inbox:
    """What user threads hand the I/O thread: calls, cancellations, and a byte that wakes it."""

    def __init__(self) -> None:
        self.incoming: deque[Task] = deque()
        self.cancels: deque[int] = deque()
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)
        self._awake = False

    def put(self, task: Task) -> None:
        self.incoming.append(task)
        self.wake()

    def cancel(self, task_id: int) -> None:
        self.cancels.append(task_id)
        self.wake()

    def wake(self, again: bool = False) -> None:
        """Wake the I/O thread (``again``: even with a wake-up byte in flight)."""
        if again:
            self._awake = False
        if not self._awake:  # one wake-up byte in flight is enough
            self._awake = True
            try:
                self._writer.send(b"x")
            except (BlockingIOError, OSError):
                pass

    def woken(self) -> None:
        """(I/O thread) Drain the wake-up bytes, before it takes what was handed."""
        try:  # (one read: a byte or two are in flight, and more wake the poll again)
            self.reader.recv(4096)
        except BlockingIOError:
            pass
        # Only now: a wake-up sent after this line is a byte we have not drained,
        # and a task queued before it is seen by Loop._take_incoming.
        self._awake = False


def in_shm(task: Task) -> tuple[list[Any], dict[str, int]]:
    """``task``'s payload (one with a large frame: ``_shm.worth``) with its large frames in
    /dev/shm (written once; the files are removed with the task)."""
    if task.in_shm is None:
        frames, names = task.frames, NONE
        try:
            frames, names = _shm.offload(task.frames, os.getpid())
        except OSError as exc:  # /dev/shm full, say: the frames go by the socket
            log.warning("cannot put a call's arguments in shared memory (%s); sending "
                        "them by the socket", exc)
        task.in_shm = (frames, names, _shm.Owned(list(names)) if names else None)
    return task.in_shm[0], task.in_shm[1]


def share_in_shm(obj: _shared.Shared[Any]) -> str | None:
    """Write shared object ``obj`` into /dev/shm once, for workers that share it to link
    (done as a call passes it, in the caller's thread where it can be: it copies it);
    its file's name, or None with /dev/shm full (it goes by the socket then)."""
    try:
        return obj.in_shm(os.getpid())
    except OSError as exc:
        log.warning("cannot put a shared object in shared memory (%s); sending it by the "
                    "socket", exc)
        return None

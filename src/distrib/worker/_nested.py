"""Calls from inside a task, in its executor: each is sent to the daemon, which relays it to
the task's Main; the Main runs it like its own calls (on any worker, this one included) and
sends its outcome back the same way. A task that waits for one (``unwrap``, ``result``,
``error``, ``wait``, ``gather``) says so, and the daemon gives its slots to other tasks
meanwhile (it parks the executor), so that nested calls cannot take every slot and wait.

Outcomes are read by the executor's reader thread (``worker._child``), which settles the
call's ``Response`` while the task goes on or waits.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from distrib import _serialize
from distrib._errors import SerializationError
from distrib._response import Response
from distrib.worker._pipe import Pipe, Verb

channel: Channel | None = None  # in an executor: its channel to the daemon


class Channel:
    """An executor's calls from inside its running task (``key``), and its waits for them."""

    def __init__(self, pipe: Pipe, lock: threading.RLock) -> None:
        self.pipe, self.lock = pipe, lock  # (the lock guards every send on the pipe)
        self.key = 0  # the running task's
        self._children: dict[int, Call] = {}
        self._next = 0
        self._waits = 0  # threads of the running task waiting for its calls
        self.pid = os.getpid()  # (a process the task forked shares the pipe: not its own)
        self.on_first_call: Callable[[], None] = lambda: None  # (outcomes must be read now)

    def send(self, header: list[Any], frames: list[Any] | tuple[Any, ...] = ()) -> None:
        with self.lock:
            self.pipe.send(header, list(frames))

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Response[Any]:
        """Send the call of ``fn`` (a ``DistributedFunction``) to be run elsewhere."""
        frames = _serialize.dumps((fn, args, kwargs))
        self.on_first_call()
        opts = fn.options
        with self.lock:
            self._next += 1
            child, key = self._next, self.key
            response = Call(child, fn.__qualname__, self, key)
            self._children[child] = response
            self.pipe.send([Verb.CALL, key, child, fn.__qualname__, list(opts.platform),
                            opts.threads, opts.retries, opts.timeout, list(opts.outputs)],
                           frames)
        return response

    def settle(self, key: int, child: int, status: str, info: dict[str, str],
               frames: list[Any]) -> None:
        """The daemon sent how call ``child`` of task ``key`` ended (reader thread)."""
        with self.lock:
            response = self._children.pop(child, None) if key == self.key else None
        if response is None:
            return  # (a call of a task that ended, or cancelled)
        if status == "ok":
            try:
                response._finish(None, _serialize.loads(frames))
            except Exception as exc:
                response._finish(None, exc=SerializationError(
                    f"the result of {response.name}#{child} does not unpickle here: "
                    f"{type(exc).__name__}: {exc}"))
        else:
            response._finish(None, exc=_serialize.loads_error(frames, info))

    def task_ended(self) -> None:
        """The running task ended: its calls' outcomes are not waited for any more (its
        Main cancels the unfinished ones)."""
        with self.lock:
            self._children.clear()
            self._waits = 0

    def cancel(self, key: int, child: int) -> None:
        with self.lock:
            if key == self.key and self._children.pop(child, None) is not None:
                self.pipe.send([Verb.CANCEL_CHILD, key, child])

    def waiting(self, key: int, delta: int) -> None:
        """A thread of the running task starts (+1) or stops (-1) waiting for its calls: the
        first to wait parks the executor, the last to stop goes on."""
        with self.lock:
            if key != self.key:
                return
            self._waits += delta
            if self._waits == 1 and delta > 0:
                self.pipe.send([Verb.PARK, key])
            elif self._waits == 0:
                self.pipe.send([Verb.UNPARK, key])


class Call(Response[Any]):
    """The ``Response`` of a call made from inside a task: its waits park the executor."""

    def __init__(self, child: int, name: str, channel: Channel, key: int) -> None:
        super().__init__(child, name, lambda c: channel.cancel(key, c))
        self._channel, self._key = channel, key

    def _waits(self) -> _Waiting:
        return _Waiting(self._channel, self._key)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self.done():
            return super().exception(0)
        with self._waits():
            return super().exception(timeout)

    def result(self, timeout: float | None = None) -> Any:
        if self.done():
            return super().result(0)
        with self._waits():
            return super().result(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        if self.done():
            return True
        with self._waits():
            return super().wait(timeout)


class _Waiting:
    def __init__(self, channel: Channel, key: int) -> None:
        self.channel, self.key = channel, key

    def __enter__(self) -> None:
        self.channel.waiting(self.key, +1)

    def __exit__(self, *_: object) -> None:
        self.channel.waiting(self.key, -1)


def submit(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Response[Any] | None:
    """Send a call made inside a task, or None outside an executor's task."""
    if channel is None or channel.pid != os.getpid():
        return None
    return channel.submit(fn, args, kwargs)

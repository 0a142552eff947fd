"""Calls from inside a task, in its executor: each is sent to the daemon, which relays it to
the task's Main; the Main runs it like its own calls (on any worker, this one included) and
sends its outcome back the same way. A task that waits for one (``unwrap``, ``result``,
``error``, ``wait``, ``gather``) says so, and the daemon gives its slots to other tasks
meanwhile (it parks the executor), so that nested calls cannot take every slot and wait.

Outcomes are read by the executor's reader thread (``executor._tasks``), which settles the
call's ``Response`` while the task goes on or waits.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from distrib import _sealed, _serialize
from distrib._errors import SerializationError
from distrib._response import Response
from distrib.wire import _pipe_messages as pm
from distrib.wire._pipe import Pipe

channel: Channel | None = None  # in an executor: its channel to the daemon


class Channel:
    """An executor's calls from inside its running task (``run_id``), and its waits for them.

    Nothing the pipe's reader thread does may wait for a send of the task's threads: the
    daemon, blocked writing an outcome to this executor, would then never read the send the
    task is blocked in. So outcomes are settled (and their callbacks run) in a thread of
    their own, and the reader's own sends (``skipped``) wait for the pipe only when it is
    free, else go out after the send in progress.
    """

    def __init__(self, pipe: Pipe, lock: threading.RLock) -> None:
        self.pipe, self.lock = pipe, lock  # (the lock guards every send on the pipe)
        self.run_id = 0  # the running task's (0: none runs)
        self.caller = ""  # the running task's function, to name it in errors elsewhere
        self._state = threading.Lock()  # run_id, calls and waits
        self._children: dict[int, Call] = {}
        self._next = 0
        self._waits = 0  # threads of the running task waiting for its calls
        self._later: deque[pm.PipeMessage] = deque()  # the reader's sends held back
        # Outcomes held back to go out together (``_outgoing``): whatever is sent next on
        # the pipe goes after them, or the daemon would read the next task's calls, parks
        # and output while it still has the held task as running.
        self.held: list[pm.PipeMessage] = []
        self._outcomes: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.pid = os.getpid()  # (a process the task forked shares the pipe: not its own)
        self.on_first_call: Callable[[], None] = lambda: None  # (outcomes must be read now)
        self._settler: threading.Thread | None = None

    def send(self, message: pm.PipeMessage) -> None:
        self.send_many((message,))

    def send_many(self, messages: Sequence[pm.PipeMessage]) -> None:
        """Send ``messages`` after the outcomes held, then the reader's sends held back."""
        with self.lock:
            if self.held:
                messages = [*self.held, *messages]
                self.held.clear()  # (in place: ``Outgoing`` holds into this same list)
            if messages:
                self.pipe.send_many(messages)
            while self._later:
                self.pipe.send(self._later.popleft())

    def send_soon(self, message: pm.PipeMessage) -> None:
        """Send a small message now if the pipe is free, else right after the send in
        progress (for the reader thread, which must not wait for one)."""
        self._later.append(message)
        if self.lock.acquire(blocking=False):
            try:
                self.send_many(())
            finally:
                self.lock.release()

    def start(self, run_id: int) -> None:
        """Task ``run_id`` starts running."""
        with self._state:
            self.run_id, self._waits = run_id, 0

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> Response[Any] | None:
        """Send the call of ``fn`` (a ``DistributedFunction``) to be run elsewhere; None
        while no task runs (a thread a task left behind: the call runs in place)."""
        if not self.run_id:
            return None
        frames = _serialize.dumps_call(fn, fn.named(), args, kwargs)
        opts = fn.options
        with self._state:
            run_id = self.run_id
            if not run_id:
                return None
            self._next += 1
            child = self._next
            response = Call(child, fn.__qualname__, self, run_id)
            self._children[child] = response
        self.on_first_call()
        if self._settler is None:
            with self._state:
                if self._settler is None:
                    self._settler = threading.Thread(target=self._settle_all,
                                                     name="distrib-calls", daemon=True)
                    self._settler.start()
        self.send(pm.Call(run_id, child, fn.__qualname__, list(opts.platform), opts.threads,
                          opts.retries, opts.timeout, list(opts.outputs),
                          opts.redistribution or "", self.caller, tuple(frames)))
        return response

    def threads(self) -> tuple[threading.Thread | None, ...]:
        """The threads it started (settling calls' outcomes)."""
        return (self._settler,)

    def outcome(self, run_id: int, child: int, status: str, info: dict[str, str],
                frames: list[Any]) -> None:
        """The daemon sent how call ``child`` of task ``run_id`` ended (reader thread: it is
        settled by the settling thread)."""
        self._outcomes.put((run_id, child, status, info, frames))

    def _settle_all(self) -> None:
        while (item := self._outcomes.get()) is not None:
            run_id, child, status, info, frames = item
            with self._state:
                response = self._children.pop(child, None) if run_id == self.run_id else None
            if response is None:
                continue  # (a call of a task that ended, or cancelled)
            if status == "ok":
                try:
                    response._set_outcome(None, _serialize.loads(frames))
                except Exception as exc:
                    response._set_outcome(None, exc=SerializationError(
                        f"the result of {response.name}#{child} does not unpickle here: "
                        f"{type(exc).__name__}: {exc}"))
            else:
                response._set_outcome(None, exc=_sealed.loads_error(frames, info))

    def task_ended(self) -> None:
        """The running task ended: its calls' outcomes are not waited for any more (its
        Main cancels the unfinished ones)."""
        with self._state:
            self._children.clear()
            self.run_id = self._waits = 0

    def cancel(self, run_id: int, child: int) -> None:
        with self._state:
            gone = run_id == self.run_id and self._children.pop(child, None) is not None
        if gone:
            self.send(pm.CancelChild(run_id, child))

    def waiting(self, run_id: int, delta: int) -> None:
        """A thread of the running task starts (+1) or stops (-1) waiting for its calls: the
        first to wait parks the executor, the last to stop goes on."""
        with self._state:
            if run_id != self.run_id or (delta < 0 and self._waits == 0):
                return
            self._waits += delta
            say = pm.Park(run_id) if self._waits == 1 and delta > 0 else \
                pm.Unpark(run_id) if self._waits == 0 else None
        if say is not None:
            self.send(say)


class Parking(Response[Any]):
    """A ``Response`` inside a task whose waits park the executor."""

    def __init__(self, task_id: int, name: str, on_cancel: Callable[[int], None] | None,
                 channel: Channel, run_id: int) -> None:
        super().__init__(task_id, name, on_cancel)
        self._channel, self._run_id = channel, run_id

    def _waits(self) -> _Waiting:
        return _Waiting(self._channel, self._run_id)

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


class Call(Parking):
    """The ``Response`` of a call made from inside a task."""

    def __init__(self, child: int, name: str, channel: Channel, run_id: int) -> None:
        super().__init__(child, name, lambda c: channel.cancel(run_id, c), channel, run_id)


def waiting_response(name: str, on_cancel: Callable[[int], None]) -> Response[Any] | None:
    """A ``Response`` whose waits park the executor, for a call made inside the running
    task that waits for something first (its ``Response`` arguments); None outside one."""
    ch = channel
    if ch is None or ch.pid != os.getpid() or not ch.run_id:
        return None
    return Parking(0, name, on_cancel, ch, ch.run_id)


def in_task() -> bool:
    """Whether this is an executor process (its calls go out through the daemon)."""
    return channel is not None and channel.pid == os.getpid()


def parking() -> _Waiting | None:
    """What the running task waits inside when it waits for its calls other than through
    their ``Response`` (joblib's retrieval loop polls): it parks the executor; None outside
    a task."""
    ch = channel
    if ch is None or ch.pid != os.getpid() or not ch.run_id:
        return None
    return _Waiting(ch, ch.run_id)


class _Waiting:
    def __init__(self, channel: Channel, run_id: int) -> None:
        self.channel, self.run_id = channel, run_id

    def __enter__(self) -> None:
        self.channel.waiting(self.run_id, +1)

    def __exit__(self, *_: object) -> None:
        self.channel.waiting(self.run_id, -1)


def submit(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Response[Any] | None:
    """Send a call made inside a task, or None outside an executor's task."""
    if channel is None or channel.pid != os.getpid():
        return None
    return channel.submit(fn, args, kwargs)

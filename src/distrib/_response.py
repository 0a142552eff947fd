"""``Response[T]``: the handle a ``@distributed`` call returns at once.

It is a ``concurrent.futures.Future``, so ``concurrent.futures.wait``, ``as_completed``,
``add_done_callback`` and ``asyncio.wrap_future`` work on it. A result or error is set once, by
the Main's I/O thread; late arrivals for a cancelled task are ignored.

Borrowed internals: ``Response.__init__`` sets ``Future``'s private fields itself instead of
calling ``Future.__init__``, and builds the ``Condition`` only when something waits (about
312 B per pending call instead of 1,600 B). A Python release that adds a field to ``Future``
breaks that; ``tests/unit/test_response.py`` fails then, naming the field to set here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

if TYPE_CHECKING:
    import asyncio

from distrib._errors import Cancelled, WaitTimeout

T = TypeVar("T")
log = logging.getLogger("distrib")

# Guards the lazy creation of each Response's Condition, and the finishing of a Response that
# has none (so nobody can be waiting on it). A Condition costs ~1.4 KB; a million pending
# calls should not pay for a million of them.
_LAZY = threading.Lock()
# concurrent.futures' states before a Future is settled. Counting threads (progress, the
# dashboard's) read ``_state`` and ``_exception`` of a settled Future without its lock.
UNFINISHED = ("PENDING", "RUNNING")


class Response(concurrent.futures.Future[T]):
    """The pending result of one task."""

    # Future's fields, set here instead of Future.__init__ (which makes a Condition).
    def __init__(self, task_id: int, name: str, on_cancel: Callable[[int], None] | None) -> None:
        self._cond: threading.Condition | None = None
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[concurrent.futures.Future[T]], object]] = []
        self.task_id = task_id
        self.name = name
        self._on_cancel = on_cancel
        self._worker: str | None = None

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<Response {self.name}#{self.task_id} {state}>"

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._cond
        if cond is None:
            with _LAZY:
                if self._cond is None:
                    self._cond = threading.Condition()
                cond = self._cond
        return cond

    @property
    def worker(self) -> str | None:
        """Name of the worker that ran the task, once it has finished (else ``None``)."""
        return self._worker

    def unwrap(self, timeout: float | None = None) -> T:
        """The task's result; raises the task's error, ``Cancelled``, or ``WaitTimeout``."""
        exc = self.error(timeout)
        if exc is not None:
            raise exc
        return self.result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == FINISHED:  # no need for a Condition to read a settled outcome
            return self._exception
        return super().exception(timeout)

    def result(self, timeout: float | None = None) -> T:
        if self._state == FINISHED and self._exception is None:
            return cast(T, self._result)
        return super().result(timeout)

    def error(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the task and return its error (``None`` if it succeeded)."""
        try:
            return self.exception(timeout)
        except concurrent.futures.CancelledError:
            return Cancelled(f"task {self.name}#{self.task_id} was cancelled")
        except TimeoutError:
            raise WaitTimeout(
                f"task {self.name}#{self.task_id} did not finish within {timeout} s"
            ) from None

    def ok(self) -> bool:
        """True if the task has finished without error (does not wait)."""
        return self.done() and not self.cancelled() and self.exception(0) is None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds; True if the task has finished."""
        done, _ = concurrent.futures.wait([self], timeout)
        return bool(done)

    def cancel(self) -> bool:
        """Withdraw the task if queued, stop it if running. False if it had already finished."""
        if self.cancelled():
            return True
        if not super().cancel():
            return False
        # Settled now: concurrent.futures.wait and as_completed count a cancelled future as
        # done only once notified (an executor's job in the standard library).
        self.set_running_or_notify_cancel()
        if self._on_cancel is not None:
            self._on_cancel(self.task_id)
        return True

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait_async().__await__()

    async def _wait_async(self) -> T:
        import asyncio  # (here: a process that never awaits need not import it)

        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(_: concurrent.futures.Future[T]) -> None:
            loop.call_soon_threadsafe(_set_once, waiter)

        self.add_done_callback(wake)
        if not waiter.done():
            with self._waits():
                await waiter
        return self.unwrap(0)

    def _waits(self) -> AbstractContextManager[object]:
        """Around a wait for it: inside a task, a call's Response parks the executor
        (``executor._calls``); elsewhere nothing."""
        return nullcontext()

    # Called by the session's I/O thread only.
    def _finish(self, worker: str | None, value: Any = None, exc: BaseException | None = None) -> None:
        self._worker = worker
        if self._cond is None:
            with _LAZY:
                if self._cond is None:  # no waiter, callback or cancel has touched it
                    if self._state == PENDING:
                        self._result, self._exception, self._state = value, exc, FINISHED
                    return
        try:
            if exc is None:
                self.set_result(value)
            else:
                self.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled by the user before the outcome arrived

    def done(self) -> bool:
        """True if the task finished, failed or was cancelled (does not wait)."""
        return self._state in (FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED)


def _set_once(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def gather(responses: Iterable[Response[T]], timeout: float | None = None,
           progress: bool = False) -> list[T]:
    """Unwrap every response in order; raises the first error met (in order).
    ``progress``: draw their progress on stderr while they run (see ``distrib.progress``)."""
    given = list(responses)
    # Inside a task, one park for the whole wait: parking per call would wake the executor
    # between calls, and at the owner's cap of parked executors it would then hold its slot.
    with _parking(r for r in given if not r.done()) or nullcontext():
        if not progress:
            return [r.unwrap(timeout) for r in given]
        from distrib._progress import Tracker

        tracker = Tracker(given)
        try:
            return [r.unwrap(timeout) for r in given]
        finally:
            tracker.close()


def _parking(responses: Iterable[Response[Any]]) -> AbstractContextManager[object] | None:
    """What to wait inside, if one of ``responses`` is a call made inside a task: it parks
    the executor (``executor._calls``); None for responses of the Main's."""
    return next((r._waits() for r in responses if type(r)._waits is not Response._waits),
                None)


class AsCompleted(Generic[T]):
    """Responses in the order they finish, with ``for`` or ``async for``."""

    def __init__(self, responses: Iterable[Response[T]], timeout: float | None) -> None:
        self._given: list[Response[T]] = list(dict.fromkeys(responses))  # (each once)
        self._timeout = timeout
        self._sync: Iterator[Response[T]] | None = None
        self._queue: asyncio.Queue[Response[T]] | None = None
        self._left = len(self._given)
        self._deadline = 0.0

    def __iter__(self) -> Iterator[Response[T]]:
        return self

    def __next__(self) -> Response[T]:
        if self._sync is None:
            self._sync = self._iterate()
        return next(self._sync)

    def _iterate(self) -> Iterator[Response[T]]:
        given: list[concurrent.futures.Future[T]] = list(self._given)
        pending = set(self._given)
        parking = _parking(self._given)
        try:
            found = concurrent.futures.as_completed(given, self._timeout)
            while pending:
                if parking is None or any(r.done() for r in pending):
                    fut = next(found)
                else:  # (nothing to yield: the wait parks the executor)
                    with parking:
                        fut = next(found)
                pending.discard(cast(Response[T], fut))
                yield cast(Response[T], fut)
        except TimeoutError:
            raise WaitTimeout(f"responses did not all finish within {self._timeout} s") \
                from None

    def __aiter__(self) -> AsCompleted[T]:
        return self

    async def __anext__(self) -> Response[T]:
        import asyncio  # (here: a process that never awaits need not import it)

        if self._queue is None:
            loop = asyncio.get_running_loop()
            queue = self._queue = asyncio.Queue()
            self._deadline = loop.time() + (self._timeout or 0.0)
            for response in self._given:
                response.add_done_callback(
                    lambda r: loop.call_soon_threadsafe(queue.put_nowait, cast(Response[T], r)))
        if self._left == 0:
            raise StopAsyncIteration
        parking = _parking(self._given) if self._queue.empty() else None
        try:
            with parking or nullcontext():
                if self._timeout is None:
                    response = await self._queue.get()
                else:
                    left = self._deadline - asyncio.get_running_loop().time()
                    response = await asyncio.wait_for(self._queue.get(), max(0.0, left))
        except TimeoutError:
            raise WaitTimeout(f"responses did not all finish within {self._timeout} s") \
                from None
        self._left -= 1
        return response


def as_completed(responses: Iterable[Response[T]], timeout: float | None = None
                 ) -> AsCompleted[T]:
    """Yield responses as they finish (like ``concurrent.futures.as_completed``), with
    ``for`` or, in a coroutine, ``async for``; ``WaitTimeout`` if they have not all finished
    ``timeout`` seconds after the iteration began."""
    return AsCompleted(responses, timeout)

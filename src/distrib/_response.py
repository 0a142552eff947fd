"""``Response[T]``: the handle a ``@distributed`` call returns at once.

It is a ``concurrent.futures.Future``, so ``concurrent.futures.wait``, ``as_completed``,
``add_done_callback`` and ``asyncio.wrap_future`` work on it. A result or error is set once
(``_set_outcome``), by the Main's I/O thread or, for a call made inside a task, by its
executor; late arrivals for a cancelled task are ignored. Waiting for many is ``_waiting``'s.

The Main (``distrib.main``) and executors (``distrib.executor``) create and settle Responses,
so this module sits below them with the shared utilities: it imports only the error tree.

Borrowed internals: ``Response.__init__`` sets ``Future``'s private fields itself instead of
calling ``Future.__init__``, and builds the ``Condition`` only when something waits (about
312 B per pending call instead of 1,600 B). A Python release that adds a field to ``Future``
breaks that; ``tests/unit/test_response.py`` fails then, naming the field to set here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager, nullcontext
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    import asyncio

from distrib._errors import Cancelled, WaitTimeout

T = TypeVar("T")
log = logging.getLogger("distrib")
# Set while progress bars are drawn (``_progress``): after a wait, the bars whose calls have
# all finished draw their last state before the script goes on to print.
after_wait: Callable[[], None] | None = None

# Guards the lazy creation of each Response's Condition, and the finishing of a Response that
# has none (so nobody can be waiting on it). A Condition costs ~1.4 KB; a million pending
# calls should not pay for a million of them.
_LAZY = threading.Lock()
# concurrent.futures' states before a Future is settled.
_UNSETTLED = ("PENDING", "RUNNING")


class Response(concurrent.futures.Future[T]):
    """The pending result of one task."""

    # Set by the Main once the task was sent to a worker (a class default: no field per call).
    _on_worker = False

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
        if after_wait is not None:
            after_wait()
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
        (``executor._subcalls``); elsewhere nothing (``_waiting`` waits inside it too)."""
        return nullcontext()

    # The internal API of the layers that settle Responses (the Main's I/O thread, an
    # executor's calls, the calls waiting for inputs) and count them (progress, statistics).
    # The readers take no lock: they read the Future's fields once it has settled (the locked
    # accessors, a few a call, slowed the I/O thread measurably on W1).

    def _set_outcome(self, worker: str | None, value: Any = None,
                     exc: BaseException | None = None) -> None:
        """Settle it with ``value`` or ``exc``, run by ``worker``; ignored if it was cancelled
        first (an outcome arriving late)."""
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

    def _is_pending(self) -> bool:
        """Not settled yet (no outcome, not cancelled)."""
        return self._state in _UNSETTLED

    def _was_cancelled(self) -> bool:
        """Settled by a cancel, or with a ``Cancelled`` error (call once it has settled)."""
        return self._state != FINISHED or isinstance(self._exception, Cancelled)

    def _settled_error(self) -> BaseException | None:
        """The error it settled with, None for a result (call once it has settled)."""
        return self._exception

    def running(self) -> bool:
        """True while the task is on a worker: sent there and not finished (a worker may hold
        a few tasks queued beyond its slots; a cancel still stops it, unlike a Future's)."""
        return self._on_worker and self._state in _UNSETTLED

    def done(self) -> bool:
        """True if the task finished, failed or was cancelled (does not wait)."""
        return self._state in (FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED)


def _set_once(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)

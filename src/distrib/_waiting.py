"""Waiting for many responses: ``gather`` (every result, in order), ``as_completed`` (as
they finish, also with ``async for``) and ``progress`` (as they finish, with a progress bar).

Inside a task, a wait for calls made there parks the executor once for the whole wait
(``Response._waits``), so that the task's slots serve others meanwhile.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

if TYPE_CHECKING:
    import asyncio

from distrib._errors import WaitTimeout
from distrib._progress import Tracker, draw_settled
from distrib._response import Response

T = TypeVar("T")


def gather(responses: Iterable[Response[T]], timeout: float | None = None,
           progress: bool = False) -> list[T]:
    """Unwrap every response in order; raises the first error met (in order).
    ``progress``: draw their progress on stderr while they run (see ``distrib.progress``)."""
    given = list(responses)
    # Inside a task, one park for the whole wait: parking per call would wake the executor
    # between calls, and at the owner's cap of parked executors it would then hold its slot.
    with _parking(r for r in given if not r.done()) or nullcontext():
        if not progress:
            results = [r.unwrap(timeout) for r in given]
            draw_settled()  # (a bar of ``f.map(..., progress=True)`` ends before gather does)
            return results
        tracker = Tracker(given)
        try:
            return [r.unwrap(timeout) for r in given]
        finally:
            tracker.close()


def _parking(responses: Iterable[Response[Any]]) -> AbstractContextManager[object] | None:
    """What to wait inside, if one of ``responses`` is a call made inside a task: it parks
    the executor (``executor._subcalls``); None for responses of the Main's."""
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
            draw_settled()
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
            draw_settled()
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


def progress(responses: Iterable[Response[T]], description: str = "",
             timeout: float | None = None) -> Iterator[Response[T]]:
    """Yield ``responses`` as they finish, drawing their progress on stderr: a bar on a
    terminal (done / total, failures, rate, time left, slots busy across workers), else one
    summary line at the end. ``WaitTimeout`` as for ``as_completed``."""
    given = list(responses)
    tracker = Tracker(given, description)
    try:
        yield from as_completed(given, timeout)
    finally:
        tracker.close()

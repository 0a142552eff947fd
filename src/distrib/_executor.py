"""``distrib.Executor``: the ``concurrent.futures.Executor`` interface over workers, so code
written for ``ProcessPoolExecutor`` runs unchanged; its futures are ``Response`` handles."""

from __future__ import annotations

import concurrent.futures
import inspect
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from distrib._api import DistributedFunction, distributed
from distrib._response import Response

T = TypeVar("T")


def _invoke(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """A call of a callable that is not a plain function (a ``functools.partial``, an
    object with ``__call__``): it travels as an argument."""
    return fn(*args, **kwargs)


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """One task for ``chunksize`` calls of ``map``."""
    return [fn(*args) for args in chunk]


class Executor(concurrent.futures.Executor):
    """Run calls on workers as a ``concurrent.futures.Executor``.

    ``platform``, ``threads``, ``retries`` and ``timeout`` are those of ``@distributed`` and
    apply to every call. ``submit`` returns a ``Response`` (a ``concurrent.futures.Future``);
    ``map`` takes ``timeout`` and ``chunksize`` as ``ProcessPoolExecutor.map`` does. Functions
    may be defined in the main script. ``shutdown`` waits for (or cancels) this executor's
    calls only: the session stays up for other code until ``distrib.shutdown()`` or exit.
    """

    def __init__(self, platform: str | Iterable[str] = "*", threads: int = 1, retries: int = 3,
                 timeout: float | None = None) -> None:
        self._decorate = distributed(platform=platform, threads=threads, retries=retries,
                                     timeout=timeout)
        self._wrapped: weakref.WeakKeyDictionary[Callable[..., Any], DistributedFunction[..., Any]] \
            = weakref.WeakKeyDictionary()
        # Its calls, weakly: the session holds those not finished (no callback per call, which
        # would give each its own Condition).
        self._calls: weakref.WeakSet[Response[Any]] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Response[T]:
        """Schedule ``fn(*args, **kwargs)`` on a worker."""
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if not (isinstance(fn, DistributedFunction) or inspect.isfunction(fn)
                    or inspect.isbuiltin(fn)):
                fn, args = _invoke, (fn, *args)
            task: DistributedFunction[..., Any] | None = (
                fn if isinstance(fn, DistributedFunction) else self._wrapped.get(fn))
            if task is None:
                task = self._wrapped[fn] = self._decorate(fn)
            response: Response[T] = task(*args, **kwargs)
            self._calls.add(response)
        return response

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[T]:
        """Results of ``fn`` over the zipped ``iterables``, in order; ``chunksize`` calls go
        to a worker as one task (fewer round trips for tiny calls)."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        calls = list(zip(*iterables))
        chunks = [calls[i:i + chunksize] for i in range(0, len(calls), chunksize)]
        results = super().map(_run_chunk, [fn] * len(chunks), chunks, timeout=timeout)
        return (value for chunk in results for value in chunk)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submits; ``cancel_futures``: cancel the calls not finished; ``wait``: wait
        for the rest."""
        with self._lock:
            self._closed = True
            pending = [r for r in list(self._calls) if not r.done()]
        if cancel_futures:
            for response in pending:
                response.cancel()
        if wait:
            concurrent.futures.wait(pending)

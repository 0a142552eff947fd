"""``distrib.Executor``: the ``concurrent.futures.Executor`` interface over workers, so code
written for ``ProcessPoolExecutor`` runs unchanged; its futures are ``Response`` handles.

With ``max_workers``, calls beyond that many wait here and a feeder thread hands each to the
session when one of the executor's calls finishes; their ``Response`` stands for the call made
(``_Held``). ``initializer`` and ``max_tasks_per_child`` wrap each call in ``_prepared``, which
runs on the worker."""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import queue
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

from distrib import _runtime
from distrib._api import DistributedFunction, distributed
from distrib._errors import InitializerFailed
from distrib._response import Response

T = TypeVar("T")

# The standard library's pools log an initializer's error there; code may watch it.
_futures_log = logging.getLogger("concurrent.futures")
# The calls of Executors not shut down, weakly (the session, or a feeder, holds those not
# finished; the Executor itself may be gone: `Executor().submit(...)`).
_unjoined: weakref.WeakSet[Response[Any]] = weakref.WeakSet()
_unjoined_lock = threading.Lock()
_exiting = False  # the interpreter is exiting: no new calls


def _at_exit() -> None:
    """At interpreter exit, before ``atexit`` ends the session: the calls of Executors not
    shut down finish, as ``ProcessPoolExecutor``'s do."""
    global _exiting
    with _unjoined_lock:
        _exiting = True
        pending = list(_unjoined)
    concurrent.futures.wait(pending)


# (where concurrent.futures registers its own: run as threading shuts down, before atexit)
getattr(threading, "_register_atexit")(_at_exit)


def _invoke(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """A call of a callable that is not a plain function (a ``functools.partial``, an
    object with ``__call__``): it travels as an argument."""
    return fn(*args, **kwargs)


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """One task for ``chunksize`` calls of ``map``."""
    return [fn(*args) for args in chunk]


@dataclass(frozen=True)
class _Setup:
    """What an Executor's calls do around the function in each executor process."""

    key: str  # the Executor's, unique
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_tasks_per_child: int | None


def _prepared(setup: _Setup, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """On the worker: the Executor's initializer before its first call in this process;
    after its ``max_tasks_per_child``-th call here, the process ends."""
    ran = _runtime.executor_calls.get(setup.key)
    if ran is None and setup.initializer is not None:
        try:
            setup.initializer(*setup.initargs)
        except BaseException as exc:
            raise InitializerFailed(
                f"the Executor's initializer {getattr(setup.initializer, '__qualname__', '')}"
                f"() raised {type(exc).__name__}: {exc}; the Executor takes no more calls"
            ) from exc
    _runtime.executor_calls[setup.key] = ran = (ran or 0) + 1
    if isinstance(fn, DistributedFunction):  # (its call would go out: the function runs here)
        fn = fn.__wrapped__
    try:
        return fn(*args, **kwargs)
    finally:
        if setup.max_tasks_per_child and ran >= setup.max_tasks_per_child:
            _runtime.retire = (f"it ran max_tasks_per_child={setup.max_tasks_per_child} calls "
                               "of an Executor")


class _Held(Response[Any]):
    """A call held back by ``max_workers``; once made, the made call's Response stands
    behind it (a cancel before then withdraws it here)."""

    def __init__(self, name: str, check: Callable[[BaseException | None], None]) -> None:
        super().__init__(0, name, self._cancel_made)
        self.made: Response[Any] | None = None
        self._check = check  # sees the outcome first (an initializer's error breaks the pool)
        # Inside a task, a Response whose waits lend the task's slots (as its calls' do).
        self._parking: Response[Any] | None = None
        if _runtime.mode is _runtime.Mode.WORKER_TASK:
            from distrib.executor import _subcalls

            self._parking = _subcalls.waiting_response(name, self._cancel_made)

    def _waits(self) -> AbstractContextManager[object]:
        return nullcontext() if self._parking is None else self._parking._waits()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        with nullcontext() if self.done() else self._waits():
            return super().exception(timeout)

    def result(self, timeout: float | None = None) -> Any:
        with nullcontext() if self.done() else self._waits():
            return super().result(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        with nullcontext() if self.done() else self._waits():
            return super().wait(timeout)

    def running(self) -> bool:
        made = self.made
        return made is not None and made.running() and not self.done()

    def _cancel_made(self, _: int) -> None:
        if self.made is not None:
            self.made.cancel()

    def follow(self, made: Response[Any]) -> None:
        self.task_id, self.made = made.task_id, made
        if self.cancelled():
            made.cancel()
        made.add_done_callback(self._made_done)

    def _made_done(self, made: Any) -> None:
        exc = made.error(0)
        self._check(exc)
        self._set_outcome(made.worker, None if exc is not None else made.result(0), exc)


@dataclass
class _Gate:
    """``max_workers``: the calls held back, and a thread that makes each in turn."""

    slots: threading.Semaphore
    held: queue.SimpleQueue[tuple[_Held, DistributedFunction[..., Any], tuple[Any, ...],
                                  dict[str, Any]] | None] = field(
        default_factory=queue.SimpleQueue)
    waiting: int = 0  # calls in ``held`` or about to be made by the thread (its lock's)
    thread: threading.Thread | None = None


class Executor(concurrent.futures.Executor):
    """Run calls on workers as a ``concurrent.futures.Executor``.

    Takes ``ProcessPoolExecutor``'s arguments: ``max_workers`` (at most that many of its
    calls at once; None: as many as the workers' slots), ``mp_context`` (accepted, no
    effect: calls run in the workers' executor processes), ``initializer(*initargs)`` (run in
    each executor process before this Executor's first call there), ``max_tasks_per_child``
    (an executor process ends after that many of its calls). ``platform``, ``threads``,
    ``retries``, ``timeout`` and ``speculative`` are those of ``@distributed`` and apply to
    every call.
    ``submit`` returns a ``Response`` (a ``concurrent.futures.Future``); ``map`` takes
    ``timeout`` and ``chunksize`` as ``ProcessPoolExecutor.map`` does. Functions may be
    defined in the main script. ``shutdown`` waits for (or cancels) this executor's calls
    only: the session stays up for other code until ``distrib.shutdown()`` or exit.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable[..., object] | None = None, initargs: tuple[Any, ...] = (),
                 *, max_tasks_per_child: int | None = None, platform: str | Iterable[str] = "*",
                 threads: int = 1, retries: int = 3, timeout: float | None = None,
                 speculative: bool = False) -> None:
        if max_workers is not None:
            if not isinstance(max_workers, int) or isinstance(max_workers, bool):
                raise TypeError(f"max_workers must be an int, got {max_workers!r} (platform "
                                "is a keyword argument: Executor(platform=...))")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        del mp_context  # (no effect: the workers start their executor processes)
        self._decorate = distributed(platform=platform, threads=threads, retries=retries,
                                     timeout=timeout, speculative=speculative)
        self._wrapped: weakref.WeakKeyDictionary[Callable[..., Any], DistributedFunction[..., Any]] \
            = weakref.WeakKeyDictionary()
        self._setup = (_Setup(uuid.uuid4().hex, initializer, tuple(initargs),
                              max_tasks_per_child)
                       if initializer is not None or max_tasks_per_child else None)
        # (with an initializer, its calls go through the gate too: one that failed breaks
        # the Executor before its caller sees the error)
        self._gate = (None if max_workers is None and initializer is None
                      else _Gate(threading.Semaphore(max_workers or 2 ** 30)))
        # Its calls, weakly: the session holds those not finished (no callback per call, which
        # would give each its own Condition).
        self._calls: weakref.WeakSet[Response[Any]] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False
        self._broken: str | bool = False  # (the name concurrent.futures' pools use)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Response[T]:
        """Schedule ``fn(*args, **kwargs)`` on a worker."""
        with self._lock:
            if self._broken:
                raise InitializerFailed(str(self._broken))
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if self._setup is not None:
                fn, args = _prepared, (self._setup, fn, *args)
            elif not (isinstance(fn, DistributedFunction) or inspect.isfunction(fn)
                      or inspect.isbuiltin(fn)):
                fn, args = _invoke, (fn, *args)
            task: DistributedFunction[..., Any] | None = (
                fn if isinstance(fn, DistributedFunction) else self._wrapped.get(fn))
            if task is None:
                task = self._wrapped[fn] = self._decorate(fn)
            response: Response[Any]
            if self._gate is None:
                response = task(*args, **kwargs)
            else:
                gate = self._gate
                response = _Held(task.__wrapped__.__qualname__, self._check_initializer)
                if not gate.waiting and gate.slots.acquire(blocking=False):
                    self._make(gate, response, task, args, kwargs, here=True)  # (a slot is free)
                else:
                    gate.waiting += 1
                    gate.held.put((response, task, args, kwargs))
                if gate.waiting and gate.thread is None:
                    self._gate.thread = threading.Thread(
                        target=self._feed, args=(self._gate,), daemon=True,
                        name="distrib-executor-feed")
                    self._gate.thread.start()
            self._calls.add(response)
        with _unjoined_lock:
            _unjoined.add(response)
        return response

    def _feed(self, gate: _Gate) -> None:
        """Make the held calls in turn, each once fewer than ``max_workers`` run."""
        _runtime.own_thread()  # (inside a task: not a thread the task left running)
        while (item := gate.held.get()) is not None:
            gate.slots.acquire()
            self._make(gate, *item)
            del item  # (nothing here may keep a call's arguments or result alive)
            with self._lock:
                gate.waiting -= 1

    def _make(self, gate: _Gate, held: _Held, task: DistributedFunction[..., Any],
              args: tuple[Any, ...], kwargs: dict[str, Any], here: bool = False) -> None:
        """Make a held call; ``here``: in ``submit``, which raises what the call raised (a
        ``MainGuardError``, say), where the thread sets it as the call's error."""
        if held.done() or self._broken:  # (cancelled while held, or no use making it)
            gate.slots.release()
            if not held.done():
                held._set_outcome(None, exc=InitializerFailed(str(self._broken)))
            return
        try:
            made = task(*args, **kwargs)
        except Exception as exc:  # (say, an argument that does not pickle)
            gate.slots.release()
            if here:
                raise
            held._set_outcome(None, exc=exc)
            return
        made.add_done_callback(lambda _: gate.slots.release())
        held.follow(made)

    def _check_initializer(self, exc: BaseException | None) -> None:
        """An initializer that raised breaks the Executor, as it does a standard pool."""
        if isinstance(exc, InitializerFailed) and not self._broken:
            _futures_log.critical("Exception in initializer:", exc_info=exc)
            self._broken = str(exc)

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

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 cancel_running: bool = False) -> None:
        """No more submits; ``cancel_futures``: cancel the calls not started (those held back
        by ``max_workers``; without it, those not on a worker yet): the rest finish, as in the
        standard library; ``cancel_running`` (distrib's): cancel every call not finished,
        stopping those running; ``wait``: wait for the rest. Calls not finished at interpreter
        exit finish first, as a standard pool's do."""
        with self._lock:
            first = not self._closed
            self._closed = True
            pending = [r for r in list(self._calls) if not r.done()]
        if cancel_futures or cancel_running:
            for response in pending:
                if cancel_running or (response.made is None if isinstance(response, _Held)
                        else not response.running()):
                    response.cancel()
        if first and self._gate is not None:
            self._gate.held.put(None)  # (the feeder makes those still held, then ends)
        if wait:
            concurrent.futures.wait(pending)

"""A joblib backend: ``import distrib.joblib``, then

    with joblib.parallel_config(backend="distrib"):
        results = Parallel(n_jobs=-1)(delayed(f)(x) for x in items)

runs joblib's batches as tasks on distrib's workers (``n_jobs=-1``: as many at once as the
workers connected have slots). joblib is an optional extra: ``pip install distrib[joblib]``.

What joblib's process backends give, this one gives too:

- ``batch_size="auto"`` groups tiny calls into batches, as loky does (``AutoBatchingMixin``);
- ``parallel_config(backend="distrib", initializer=f, initargs=(...))`` runs ``f`` once in each
  executor process before the first batch of that backend there;
- a nested ``Parallel`` inside a task lends its slot while it waits (``retrieval_context``), as
  ``distrib.gather`` does, so nested loops cannot take every slot and wait;
- on the embedded local cluster an array backed by an ``np.memmap`` is mapped from the same
  file (writes into a shared output land), and ``multiprocessing`` Manager proxies work (the
  Main's authkey travels to the local cluster's executors, never to other workers). On other
  workers such an array arrives as a copy, and a write into one the Main could write is
  refused with ``SerializationError`` rather than lost.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import multiprocessing
import os
import pickle
import sys
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any

try:
    from joblib import register_parallel_backend  # type: ignore[import-untyped]
    from joblib._parallel_backends import (  # type: ignore[import-untyped]
        AutoBatchingMixin, ParallelBackendBase)
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("distrib.joblib needs joblib: pip install 'distrib[joblib]' (or joblib)") \
        from None

from distrib import _serialize
from distrib._errors import SerializationError
from distrib._executor import Executor
from distrib._response import Response


# In an executor process: the initializers already run (by backend), whether this process is
# on the Main's embedded local cluster (set by the batches it ran), and the files whose
# memmaps the running batch got as unwritable copies.
_initialized: set[str] = set()
_on_local_cluster = False
_refused: list[str] = []


def _slots() -> int:
    """Slots of the workers this Main is connected to (the cores here, before any)."""
    from distrib.main import _current

    session = _current._session
    if session is not None:
        total = sum(w.slots for w in session.scheduler.workers.values())
        if total:
            return total
    return os.cpu_count() or 1


def _local_cluster() -> bool:
    """Whether the batches go to the embedded local cluster alone (this machine, this user):
    the Main's session started one, or this executor is on one."""
    from distrib.main import _current

    session = _current._session
    return session.local is not None if session is not None else _on_local_cluster


class DistribBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's batches as distrib tasks (``backend="distrib"``)."""

    supports_retrieve_callback = True
    default_n_jobs = -1

    def __init__(self, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None,
                 initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = (), **kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads)
        self._options = kwargs  # platform=, threads=, retries=, timeout= of each task
        self._init = _initializer(initializer, initargs)
        # (named as loky's: joblib's tests look for a backend's pool there)
        self._workers: Executor | None = None
        self._calls: weakref.WeakSet[Response[Any]] = weakref.WeakSet()  # (the session
        # holds those not finished)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or n_jobs == -1:
            return _slots()
        if n_jobs < 0:
            return max(1, _slots() + 1 + n_jobs)
        return max(1, n_jobs)

    def configure(self, n_jobs: int = 1, parallel: Any = None,
                  initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = (),
                  **kwargs: Any) -> int:
        """(``initializer``/``initargs`` given to ``Parallel`` itself come here.)"""
        import distrib

        if n_jobs == 0:  # (before a session starts for nothing)
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        from distrib.executor import _subcalls

        if not _subcalls.in_task():  # (a task's calls go through its worker, to its Main)
            distrib.init()  # (idempotent: the workers are known before n_jobs is counted)
        self.parallel = parallel
        if initializer is not None:
            self._init = _initializer(initializer, initargs)
        self._workers = Executor(**self._options)
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Any, callback: Any = None) -> Response[Any]:
        assert self._workers is not None, "configure() first"
        future = self._workers.submit(_Batch(func, self._init, _local_cluster()))
        self._calls.add(future)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Response[Any]) -> Any:
        return future.result()

    @contextlib.contextmanager
    def retrieval_context(self) -> Iterator[None]:
        """Inside a task, the wait for this loop's batches lends the task's slot (joblib's
        loop polls, it does not wait through the ``Response``)."""
        from distrib.executor import _subcalls

        with _subcalls.parking() or contextlib.nullcontext():
            yield

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Stop every batch, running ones too (loky kills its workers): a later loop on
        this backend must not wait behind batches no one will read."""
        for call in list(self._calls):
            call.cancel()
        if self._workers is not None:
            self._workers.shutdown(wait=False, cancel_futures=True)
            self._workers = Executor(**self._options) if ensure_ready else None

    def terminate(self) -> None:
        if self._workers is not None:
            self._workers.shutdown(wait=False)
            self._workers = None
        self.reset_batch_stats()


def _initializer(initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]
                 ) -> tuple[str, Callable[..., Any], tuple[Any, ...]] | None:
    """The initializer with a key of its own (it runs once per executor process and key)."""
    return (uuid.uuid4().hex, initializer, tuple(initargs)) if initializer else None


class _Batch:
    """A joblib batch as it travels: with the backend's initializer, pickled by ``_dumps``
    (as any call is, but its memmap-backed arrays as their file)."""

    def __init__(self, calls: Any, init: tuple[str, Callable[..., Any], tuple[Any, ...]] | None,
                 local: bool) -> None:
        self.calls, self.init, self.local = calls, init, local

    def __reduce__(self) -> tuple[Any, ...]:
        # The authkey goes first: Manager proxies in the calls connect as they unpickle.
        key = _Authkey(bytes(multiprocessing.current_process().authkey)) if self.local else None
        head, buffers = _dumps((self.calls, self.init), self.local)
        return (_load, (key, head, buffers, self.local))

    def __call__(self) -> Any:
        global _on_local_cluster
        _on_local_cluster = self.local
        if self.init is not None and self.init[0] not in _initialized:
            self.init[1](*self.init[2])
            _initialized.add(self.init[0])
        try:
            return self.calls()
        except ValueError as exc:  # (numpy's "assignment destination is read-only")
            if _refused and "read-only" in str(exc):
                raise SerializationError(
                    f"a write into an np.memmap of {_refused[0]} cannot land from a worker "
                    "that is not on the Main's machine (the file is there): return the "
                    "values from the task instead, or run on the embedded local cluster"
                ) from exc
            raise
        finally:
            _refused.clear()


class _Authkey:
    """The Main's ``multiprocessing`` authkey, adopted by the executor as it unpickles."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (_adopt_authkey, (self.key,))


def _adopt_authkey(key: bytes) -> None:
    multiprocessing.current_process().authkey = key


def _load(_key: None, head: bytes, buffers: list[Any], local: bool) -> _Batch:
    _refused.clear()
    calls, init = pickle.loads(head, buffers=buffers)
    return _Batch(calls, init, local)


def _dumps(obj: Any, local: bool) -> tuple[bytes, list[Any]]:
    """Pickle ``obj`` as ``_serialize.dumps`` does (by reference what workers can import, else
    by value), its memmap-backed arrays by ``_reduce_array``; large buffers are left out of
    the stream (they travel out of band in the call's own pickle)."""
    head, *buffers = _serialize.to_frames(obj, functools.partial(_reduce_array, local=local))
    return head, buffers


def _reduce_array(obj: Any, local: bool) -> Any:
    """An array backed by an ``np.memmap``: on the local cluster, the same file mapped
    again (as joblib's own process backends do); elsewhere a copy, unwritable if the Main
    could write it (a write would be lost)."""
    np = sys.modules.get("numpy")
    if np is None or not isinstance(obj, np.ndarray):
        return NotImplemented
    backing = _backing_memmap(obj, np)
    if backing is None:
        return NotImplemented
    if local:
        from joblib._memmapping_reducer import _reduce_memmap_backed  # type: ignore[import-untyped]

        return _reduce_memmap_backed(obj, backing)
    if backing.mode in ("r+", "w+") and obj.flags.writeable:
        return (_unwritable, (np.array(obj), str(backing.filename)))
    return NotImplemented


def _backing_memmap(obj: Any, np: Any) -> Any:
    """The ``np.memmap`` at the root of ``obj``'s bases, if it maps a file."""
    at, seen = obj, 0
    while seen < 100:
        base = getattr(at, "base", None)
        if base is None:
            return None
        if isinstance(base, mmap.mmap):
            return at if isinstance(at, np.memmap) and at.filename else None
        at, seen = base, seen + 1
    return None


def _unwritable(array: Any, filename: str) -> Any:
    array.flags.writeable = False
    _refused.append(filename)
    return array


register_parallel_backend("distrib", DistribBackend)

"""A joblib backend: ``import distrib.joblib``, then

    with joblib.parallel_config(backend="distrib"):
        results = Parallel(n_jobs=-1)(delayed(f)(x) for x in items)

runs joblib's batches as tasks on distrib's workers (``n_jobs=-1``: as many at once as the
workers connected have slots). joblib is an optional extra: ``pip install distrib[joblib]``.
"""

from __future__ import annotations

import os
from typing import Any

try:
    from joblib import ParallelBackendBase, register_parallel_backend  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("distrib.joblib needs joblib: pip install 'distrib[joblib]' (or joblib)") \
        from None

from distrib._executor import Executor
from distrib._response import Response


def _slots() -> int:
    """Slots of the workers this Main is connected to (the cores here, before any)."""
    from distrib.main import _current

    session = _current._session
    if session is not None:
        total = sum(w.slots for w in session.scheduler.workers.values())
        if total:
            return total
    return os.cpu_count() or 1


class DistribBackend(ParallelBackendBase):  # type: ignore[misc]
    """joblib's batches as distrib tasks (``backend="distrib"``)."""

    supports_retrieve_callback = True
    default_n_jobs = -1

    def __init__(self, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads)
        self._options = kwargs  # platform=, threads=, retries=, timeout= of each task
        self._executor: Executor | None = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs is None or n_jobs == -1:
            return _slots()
        if n_jobs < 0:
            return max(1, _slots() + 1 + n_jobs)
        return max(1, n_jobs)

    def configure(self, n_jobs: int = 1, parallel: Any = None, **kwargs: Any) -> int:
        import distrib

        distrib.init()  # (idempotent: the workers are known before n_jobs is counted)
        self.parallel = parallel
        self._executor = Executor(**self._options)
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Any, callback: Any = None) -> Response[Any]:
        assert self._executor is not None, "configure() first"
        future = self._executor.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Response[Any]) -> Any:
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = Executor(**self._options) if ensure_ready else None

    def terminate(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


register_parallel_backend("distrib", DistribBackend)

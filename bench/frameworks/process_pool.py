"""The standard library's ``ProcessPoolExecutor`` with the platform's default start method."""

from __future__ import annotations

import multiprocessing
import platform
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any


class Framework:
    """``concurrent.futures.ProcessPoolExecutor(max_workers=slots)``."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def version(self) -> str:
        return f"stdlib {platform.python_version()} ({multiprocessing.get_start_method()})"

    def start(self, slots: int) -> None:
        self._pool = ProcessPoolExecutor(max_workers=slots)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        assert self._pool is not None, "start() first"
        return self._pool.submit(fn, *args)

    def result(self, handle: Future[Any]) -> Any:
        return handle.result()

    def put(self, obj: Any) -> Any:
        return obj  # nothing for that: each call pickles it again

    def stop(self) -> None:
        if self._pool is not None:
            # Queued calls are dropped, as distrib's shutdown() cancels them.
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

"""loky's reusable executor (the process pool joblib uses)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import loky


class Framework:
    """``loky.get_reusable_executor(max_workers=slots)``."""

    def __init__(self) -> None:
        self._pool: Any = None

    def version(self) -> str:
        return str(loky.__version__)

    def start(self, slots: int) -> None:
        self._pool = loky.get_reusable_executor(max_workers=slots)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        assert self._pool is not None, "start() first"
        future: Future[Any] = self._pool.submit(fn, *args)
        return future

    def result(self, handle: Future[Any]) -> Any:
        return handle.result()

    def put(self, obj: Any) -> Any:
        return obj  # nothing for that: each call pickles it again

    def stop(self) -> None:
        if self._pool is not None:
            # kill_workers: the reusable executor would otherwise keep them for the next user.
            self._pool.shutdown(wait=True, kill_workers=True)
            self._pool = None

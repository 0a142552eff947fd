"""Dask distributed: a ``LocalCluster`` of worker processes and a ``Client``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any

import distributed

# Above this many slots, slots become threads in two worker processes: the tasks that need
# that many slots (sleeps) release the GIL, and 100 worker processes plus their nannies
# would measure process churn on a 2-core machine rather than Dask.
MAX_PROCESSES = 2


class Framework:
    """``LocalCluster(n_workers, threads_per_worker, processes=True)`` + ``Client``."""

    def __init__(self) -> None:
        self._cluster: distributed.LocalCluster | None = None
        self._client: distributed.Client | None = None

    def version(self) -> str:
        return f"dask {metadata.version('dask')}, distributed {metadata.version('distributed')}"

    def start(self, slots: int) -> None:
        processes = min(slots, MAX_PROCESSES)
        self._cluster = distributed.LocalCluster(
            n_workers=processes,
            threads_per_worker=-(-slots // processes),
            processes=True,
            dashboard_address=None,  # no web server: nothing here would look at it
            silence_logs=logging.ERROR,
        )
        self._client = distributed.Client(self._cluster)

    def submit(self, fn: Callable[..., Any], *args: Any) -> distributed.Future[Any]:
        assert self._client is not None, "start() first"
        # pure=False: identical calls (1,000 x sleep(0.1)) are separate tasks, not one
        # deduplicated key.
        return self._client.submit(fn, *args, pure=False)

    def result(self, handle: distributed.Future[Any]) -> Any:
        return handle.result()

    def put(self, obj: Any) -> Any:
        assert self._client is not None, "start() first"
        return self._client.scatter(obj, broadcast=True)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

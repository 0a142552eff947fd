"""distrib: the embedded local cluster, ``slots`` threads on one local worker daemon."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import distrib
from distrib import DistributedFunction, Response

# The shipped workspace must hold the ``bench`` package so that workers import the task
# functions by name (``bench.workloads.inc``), as every other framework does.
REPO_ROOT = Path(__file__).resolve().parents[2]


class Framework:
    """distrib behind the harness's interface."""

    def __init__(self) -> None:
        # One decorated wrapper per function, as a user's ``@distributed`` would be.
        self._wrapped: dict[Callable[..., Any], DistributedFunction[..., Any]] = {}

    def version(self) -> str:
        return distrib.__version__

    def start(self, slots: int) -> None:
        distrib.init(local_threads=slots, workspace=REPO_ROOT)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Response[Any]:
        wrapped = self._wrapped.get(fn)
        if wrapped is None:
            wrapped = self._wrapped[fn] = distrib.distributed(fn)
        return wrapped(*args)

    def result(self, handle: Response[Any]) -> Any:
        return handle.unwrap()

    def put(self, obj: Any) -> Any:
        return distrib.share(obj)

    def stop(self) -> None:
        distrib.shutdown()

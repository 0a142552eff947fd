"""Ray: a local single-node cluster started by ``ray.init``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

# Set before ray is imported: no usage report (this machine has no network for it, and the
# attempt is not what is measured).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402


class Framework:
    """``ray.init(num_cpus=slots)`` and ``ray.remote`` tasks of one CPU each."""

    def __init__(self) -> None:
        # One remote function per plain function, as a user's ``@ray.remote`` would be.
        self._remote: dict[Callable[..., Any], Any] = {}

    def version(self) -> str:
        return str(ray.__version__)

    def start(self, slots: int) -> None:
        ray.init(
            num_cpus=slots,
            include_dashboard=False,
            logging_level=logging.ERROR,
        )

    def submit(self, fn: Callable[..., Any], *args: Any) -> ray.ObjectRef[Any]:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = ray.remote(fn)
        ref: ray.ObjectRef[Any] = remote.remote(*args)
        return ref

    def result(self, handle: ray.ObjectRef[Any]) -> Any:
        return ray.get(handle)

    def put(self, obj: Any) -> Any:
        return ray.put(obj)

    def stop(self) -> None:
        ray.shutdown()

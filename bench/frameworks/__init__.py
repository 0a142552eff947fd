"""Framework adapters: one module per framework, each exposing a ``Framework`` class.

Every workload drives frameworks only through this interface, so all of them run the same
task bodies the same way. Adapters are imported by name, inside the measurement subprocess,
so a peer that fails to import fails its own measurements and nothing else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

# Name on the command line -> module holding its adapter. The order is the report's order.
MODULES: dict[str, str] = {
    "distrib": "bench.frameworks.distrib_",
    "distrib-worker": "bench.frameworks.distrib_worker",
    "distrib-sandbox": "bench.frameworks.distrib_sandbox",
    "process_pool": "bench.frameworks.process_pool",
    "loky": "bench.frameworks.loky_",
    "dask": "bench.frameworks.dask_",
    "ray": "bench.frameworks.ray_",
}


# Run only when named: distrib on a worker daemon of its own, without and with its sandbox.
ASKED_ONLY = ("distrib-worker", "distrib-sandbox")


class Framework(Protocol):
    """What a workload needs of a framework."""

    def version(self) -> str:
        """The version string shown in the report."""

    def start(self, slots: int) -> None:
        """Start a local cluster that runs ``slots`` tasks at once."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Submit ``fn(*args)`` and return a handle at once."""

    def result(self, handle: Any) -> Any:
        """Wait for a handle's task and return its result (raise its error)."""

    def put(self, obj: Any) -> Any:
        """Hand ``obj`` over once, for many calls: what to pass instead of it (the object
        itself where the framework has nothing for that)."""

    def stop(self) -> None:
        """Stop the cluster started by ``start``."""


def load(name: str) -> Framework:
    """A fresh adapter for the framework called ``name``."""
    module = importlib.import_module(MODULES[name])
    adapter: Framework = module.Framework()
    return adapter

"""Task functions for W9: calls made from inside a task, each framework its own way (distrib
``@distributed`` calls and ``gather``; Ray ``.remote`` and ``ray.get`` inside a task; Dask
``worker_client``). The outer task is submitted like any other; it names its framework."""

from __future__ import annotations

from typing import Any

from bench.workloads import inc

_inner: dict[str, Any] = {}  # per framework, in the process running the outer task


def _distrib_inc() -> Any:
    if "distrib" not in _inner:
        import distrib

        _inner["distrib"] = distrib.distributed(inc)
    return _inner["distrib"]


def _ray_inc() -> Any:
    if "ray" not in _inner:
        import ray

        _inner["ray"] = ray.remote(inc)
    return _inner["ray"]


def fan_out(framework: str, calls: int) -> int:
    """``calls`` calls of ``inc`` made at once from inside this task, then gathered."""
    if framework == "distrib":
        import distrib

        f = _distrib_inc()
        return sum(distrib.gather([f(i) for i in range(calls)]))
    if framework == "ray":
        import ray

        f = _ray_inc()
        return sum(ray.get([f.remote(i) for i in range(calls)]))
    if framework == "dask":
        from distributed import worker_client

        with worker_client() as client:
            return sum(client.gather(client.map(inc, range(calls), pure=False)))
    raise ValueError(f"no nested calls for {framework}")


def chain(framework: str, calls: int) -> int:
    """``calls`` calls of ``inc`` from inside this task, each waited for before the next."""
    x = 0
    if framework == "distrib":
        f = _distrib_inc()
        for _ in range(calls):
            x = f(x).unwrap()
        return x
    if framework == "ray":
        import ray

        g = _ray_inc()
        for _ in range(calls):
            x = ray.get(g.remote(x))
        return x
    if framework == "dask":
        from distributed import worker_client

        with worker_client() as client:
            for _ in range(calls):
                x = client.submit(inc, x, pure=False).result()
        return x
    raise ValueError(f"no nested calls for {framework}")

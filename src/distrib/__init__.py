"""distrib: spread the calls of ordinary Python functions over many machines.

    from distrib import distributed

    @distributed(platform="*", threads=1)
    def add(a: int, b: int) -> int:
        return a + b

    if __name__ == "__main__":
        print(add(1, 2).unwrap())

This module is the public API; everything else is internal. Imports go one way: the API ->
``main`` | ``worker`` | ``executor`` (never each other) -> their common ground (``_config``,
``_serialize``, ...) -> ``wire``, ``workspace`` -> shared utilities (``_response``,
``_errors``, ...); docs/design.md "Layers", checked by ``./run check``.
"""

import sys as _sys
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

_before = set(_sys.modules)  # (what distrib itself imports is not the user's environment)

from pathlib import Path as _Path  # noqa: E402

from distrib._api import DistributedFunction, distributed
from distrib._errors import (
    AuthError,
    Cancelled,
    ConfigError,
    ConnectionFailed,
    DependencyError,
    DistribError,
    InitializerFailed,
    InputFailed,
    LaunchError,
    MainGuardError,
    NestedDeadlock,
    ProtocolError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TaskDiskExceeded,
    TaskTimeout,
    WaitTimeout,
    WorkerCrashed,
    WorkerLost,
    WorkspaceError,
)
from distrib._executor import Executor
from distrib._response import Response
from distrib._shared import Shared, share
from distrib._waiting import AsCompleted, as_completed, gather, progress

from distrib import _cluster as _cluster  # noqa: E402  (the launchers' hook for sessions)
from distrib import _runtime as _rt  # noqa: E402

_rt.own_modules.update(set(_sys.modules) - _before)
del _before
__version__ = "0.1.0"

if _TYPE_CHECKING:
    from distrib.launch import SSH, Slurm


def __getattr__(name: str) -> _Any:
    """``SSH`` and ``Slurm``, imported when first asked for: most scripts launch no workers,
    and every Main, daemon and executor imports this module."""
    if name in ("SSH", "Slurm"):
        before = set(_sys.modules)
        from distrib import launch

        _rt.own_modules.update(set(_sys.modules) - before)
        return getattr(launch, name)
    raise AttributeError(f"module 'distrib' has no attribute {name!r}")


__all__ = [
    "AsCompleted",
    "AuthError",
    "Cancelled",
    "ConfigError",
    "ConnectionFailed",
    "DependencyError",
    "DistribError",
    "InitializerFailed",
    "InputFailed",
    "DistributedFunction",
    "Executor",
    "LaunchError",
    "MainGuardError",
    "NestedDeadlock",
    "ProtocolError",
    "RemoteError",
    "RemoteTraceback",
    "Response",
    "SSH",
    "SerializationError",
    "Shared",
    "Slurm",
    "TaskDiskExceeded",
    "TaskTimeout",
    "WaitTimeout",
    "WorkerCrashed",
    "WorkerLost",
    "WorkspaceError",
    "as_completed",
    "distributed",
    "gather",
    "init",
    "progress",
    "share",
    "shutdown",
]


def init(
    workers: list[str | tuple[str, str]] | None = None,
    *,
    local_threads: int | None = None,
    workspace: str | _Path | None = None,
    forward_output: bool | None = None,
    key: str | _Path | None = None,
    dependencies: str | None = None,
    requirements: str | _Path | None = None,
    max_payload: int | str | None = None,
    dashboard: bool | int | str | None = None,
    redistribution: str | None = None,
    listen: str | None = None,
    authorized_workers: str | _Path | None = None,
    linger: float | str | None = None,
    cluster: "SSH | Slurm | None" = None,
) -> None:
    """Set up explicitly. Without this, the first call sets up from configuration.

    ``workers``: running ``distrib worker`` daemons, as ``"host:port"`` or, for workers with
    keys, ``("host:port", "<worker public key>")``; none means the embedded local cluster with
    ``local_threads`` slots (default: the number of cores). ``key``: this Main's secret key
    file (from ``distrib keygen``), needed for workers with keys.
    ``workspace``: the folder shipped to workers (default: the main script's folder).
    ``forward_output``: print what tasks print, prefixed with the worker's name.
    ``dependencies``: ``"auto"`` (default) has workers install the packages the workspace
    imports, at the versions installed here; ``"none"`` installs nothing.
    ``requirements``: a ``requirements.txt``, ``pyproject.toml`` or ``uv.lock`` whose packages
    workers install instead.
    ``max_payload``: the most a call's arguments, or its result, may pickle to (``"2G"``, or
    bytes); more raises ``SerializationError`` where it was pickled (default: no limit).
    ``dashboard``: serve a live web dashboard of the run: ``True`` (on 127.0.0.1:8787, or a
    free port if that one is taken), a port, or ``"host:port"``; its URL is printed once.
    ``redistribution``: how calls made inside tasks go by default: ``"auto"`` (worker to
    worker where the workers allow it, else through this Main), ``"relayed"`` or ``"direct"``.
    ``listen``: ``"host:port"`` where this Main also accepts workers that dial it (``distrib
    worker --connect``), for workers it cannot reach (behind NAT); it needs ``key`` and
    ``authorized_workers``, a file of those workers' public keys, one a line.
    ``linger``: how long the local cluster's daemon stays up after this script ends, for the
    next script of this user to start warm (``"10m"``, ``"30s"``, or seconds; default 0: it
    stops with the script).
    ``cluster``: start workers elsewhere that dial this Main back, e.g. ``distrib.SSH(["lab1",
    "lab2"], threads=8)``: distrib is installed on each host over SSH and its worker lives as
    long as this Main; a host that fails is logged in one line naming it (``LaunchError`` if
    none starts). Or ``distrib.Slurm(nodes=2, cpus_per_task=8, time="2:00:00")``: batch jobs
    of workers, cancelled when this Main ends; it listens on a free port of every interface
    unless ``listen`` says where.
    """
    from distrib.main._current import init as _init  # (first: its imports are counted as
    from distrib._config import Overrides  # distrib's own, see ``distrib.main``)

    _init(Overrides(workers, local_threads, workspace, forward_output, key, dependencies,
                    requirements, max_payload, dashboard, redistribution, listen=listen,
                    authorized_workers=authorized_workers, linger=linger,
                    cluster=cluster))


def shutdown() -> None:
    """Tear down: unfinished tasks end as ``Cancelled``, local workers stop. Idempotent.

    Calls made during or after it end as ``Cancelled`` at once, until ``init()`` is called."""
    from distrib.main._current import shutdown as _shutdown

    _shutdown()

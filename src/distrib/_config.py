"""Settings, read once at set-up into a frozen dataclass and passed down.

Sources, later ones winning: defaults, ``DISTRIB_*`` environment variables, ``init()``
arguments. Every invalid value fails with a ``ConfigError`` naming the setting and its source.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from distrib._errors import ConfigError


@dataclass(frozen=True, slots=True)
class WorkerAddress:
    """A worker to connect to: ``host:port``, ``tcp://...`` or ``ipc://...``."""

    address: str
    public_key: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the Main needs to set up; built by ``load``."""

    workers: tuple[WorkerAddress, ...] = ()  # empty: start the embedded local cluster
    local_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    forward_output: bool = True
    workspace: Path | None = None  # None: the main script's folder (or the current folder)
    excludes: tuple[str, ...] = ()
    cache_dir: Path = field(default_factory=lambda: Path(platformdirs.user_cache_dir("distrib")))
    heartbeat_interval: float = 1.0
    lost_after: float = 10.0
    connect_timeout: float = 30.0


def endpoint(address: str) -> str:
    """Turn ``host:port`` into a ZeroMQ endpoint; pass ``tcp://`` and ``ipc://`` through."""
    if address.startswith(("tcp://", "ipc://")):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"worker address {address!r}: expected host:port, tcp:// or ipc://")
    return f"tcp://{host}:{port}"


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected true or false")


def _positive(name: str, raw: str | int | float, kind: type[int] | type[float]) -> float:
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={raw!r}: expected a positive {kind.__name__}") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: expected a positive {kind.__name__}")
    return value


def _workers(name: str, items: Sequence[str | tuple[str, str] | WorkerAddress]) -> tuple[WorkerAddress, ...]:
    out: list[WorkerAddress] = []
    for item in items:
        if isinstance(item, WorkerAddress):
            worker = item
        elif isinstance(item, str):
            worker = WorkerAddress(item.strip())
        elif isinstance(item, tuple) and len(item) == 2:
            worker = WorkerAddress(item[0], item[1])
        else:
            raise ConfigError(f"{name}: expected 'host:port' or (address, public_key), got {item!r}")
        try:
            endpoint(worker.address)
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        out.append(worker)
    return tuple(out)


def load(
    environ: Mapping[str, str] | None = None,
    workers: Sequence[str | tuple[str, str] | WorkerAddress] | None = None,
    local_threads: int | None = None,
    workspace: str | Path | None = None,
    forward_output: bool | None = None,
) -> Settings:
    """Build Settings from the environment and explicit ``init()`` arguments."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    if raw := env.get("DISTRIB_WORKERS", "").strip():
        values["workers"] = _workers("DISTRIB_WORKERS", [w for w in raw.split(",") if w.strip()])
    if raw := env.get("DISTRIB_LOCAL_THREADS", "").strip():
        values["local_threads"] = int(_positive("DISTRIB_LOCAL_THREADS", raw, int))
    if raw := env.get("DISTRIB_OUTPUT", "").strip():
        values["forward_output"] = _bool("DISTRIB_OUTPUT", raw)
    if raw := env.get("DISTRIB_WORKSPACE", "").strip():
        values["workspace"] = Path(raw)
    if raw := env.get("DISTRIB_EXCLUDE", "").strip():
        values["excludes"] = tuple(p.strip() for p in raw.split(",") if p.strip())
    if raw := env.get("DISTRIB_CACHE_DIR", "").strip():
        values["cache_dir"] = Path(raw)
    if raw := env.get("DISTRIB_HEARTBEAT", "").strip():
        values["heartbeat_interval"] = _positive("DISTRIB_HEARTBEAT", raw, float)
    if raw := env.get("DISTRIB_LOST_AFTER", "").strip():
        values["lost_after"] = _positive("DISTRIB_LOST_AFTER", raw, float)
    if workers is not None:
        values["workers"] = _workers("init(workers=...)", list(workers))
    if local_threads is not None:
        values["local_threads"] = int(_positive("init(local_threads=...)", local_threads, int))
    if workspace is not None:
        values["workspace"] = Path(workspace)
    if forward_output is not None:
        values["forward_output"] = bool(forward_output)
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.workspace is not None and not settings.workspace.is_dir():
        raise ConfigError(f"workspace {settings.workspace}: no such folder")
    return settings

"""One setting's value, parsed and checked: each function takes the setting's name (as its
source writes it) and raises ``ConfigError`` naming it and what is wrong."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from distrib._errors import ConfigError


def endpoint(address: str) -> str:
    """Turn ``host:port`` into a ZeroMQ endpoint; pass ``tcp://`` and ``ipc://`` through."""
    if address.startswith(("tcp://", "ipc://", "relay:")):  # (relay:KEY: see wire._reach)
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"worker address {address!r}: expected host:port, tcp:// or ipc://")
    return f"tcp://{host}:{port}"


def parse_size(raw: Any, name: str) -> int:
    """Bytes in ``10G``, ``500M``, ``64K`` or ``1000`` (or an int)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = str(raw).strip().upper().rstrip("B"), ""
    if number[-1:] in units:
        number, unit = number[:-1], number[-1]
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a size such as 10G, 500M or 64K") from None
    if not math.isfinite(value) or value <= 0 or isinstance(raw, bool):
        raise ConfigError(f"{name}={raw!r}: expected a size above 0")
    return int(value)


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def boolean(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(f"{name}={raw!r}: expected true or false")


def positive(name: str, raw: Any, kind: type[int] | type[float]) -> Any:
    try:
        if isinstance(raw, bool) or (kind is int and isinstance(raw, float)):
            raise ValueError
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={raw!r}: expected a positive {kind.__name__}") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: expected a positive {kind.__name__}")
    return value


def strings(name: str, raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ConfigError(f"{name}: expected a list of strings, got {raw!r}")
    return tuple(raw)


DASHBOARD_PORT = 8787


def dashboard(name: str, raw: Any) -> str | None:
    """Where the dashboard listens, from true/false, a port or "host:port" (None: off)."""
    if (isinstance(raw, str) and raw.strip().lower() in TRUE + FALSE) or raw in (0, 1):
        raw = boolean(name, str(raw))  # (0 and 1 too, as for every switch; any port: ":0")
    if isinstance(raw, bool):
        return f"127.0.0.1:{DASHBOARD_PORT}" if raw else None
    host, port = "127.0.0.1", str(raw).strip()
    if isinstance(raw, str) and ":" in port:
        host, _, port = port.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
    if not host or not port.isdigit() or int(port) > 65535 or isinstance(raw, float):
        raise ConfigError(f"{name}={raw!r}: expected true, false, a port (8787) or "
                          "\"host:port\" (\":0\": any free port)")
    return f"{host}:{int(port)}"


def dependencies(name: str, raw: Any) -> str:
    if raw not in ("auto", "none"):
        raise ConfigError(f"{name}={raw!r}: expected \"auto\" (what the workspace imports) or "
                          "\"none\" (name a requirements file with requirements = ...)")
    return str(raw)


def requirements(name: str, path: Path) -> Path:
    """A requirements file's path, checked: it exists, and its kind is one workers install."""
    if not (path.suffix == ".txt" or path.name in ("pyproject.toml", "uv.lock")):
        raise ConfigError(f"{name}={str(path)!r}: expected a requirements .txt file, a "
                          "pyproject.toml or a uv.lock")
    if not path.is_file():
        raise ConfigError(f"{name}={str(path)!r}: no such file ({path.absolute()}; a relative "
                          "path is taken from the current folder, or from the configuration "
                          "file's)")
    return path


def listen(name: str, raw: Any) -> str:
    """Where a Main listens for workers that dial it: "host:port"."""
    host, _, port = str(raw).strip().rpartition(":")
    if not isinstance(raw, str) or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name}={raw!r}: expected \"host:port\" (\"0.0.0.0:7788\": every "
                          "interface)")
    return f"{host}:{int(port)}"


def string(name: str, raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{name}: expected a non-empty string, got {raw!r}")
    return raw


_SECONDS = {"s": 1, "m": 60, "h": 3600}


def duration(name: str, raw: Any) -> float:
    """Seconds in ``"10m"``, ``"30s"``, ``"2h"`` or a number of seconds; 0 (or false, "off")
    for none."""
    if isinstance(raw, bool) or (isinstance(raw, str) and raw.strip().lower() in FALSE):
        if raw is True:
            raise ConfigError(f"{name}={raw!r}: expected a duration such as \"10m\", \"30s\" "
                              "or 0 (off)")
        return 0.0
    text = str(raw).strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in _SECONDS else (text, "")
    try:
        value = float(number) * _SECONDS.get(unit, 1)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a duration such as \"10m\", \"30s\" "
                          "or 0 (off)") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={raw!r}: expected a duration of 0 (off) or more")
    return value

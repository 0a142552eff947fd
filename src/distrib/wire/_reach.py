"""How a worker is reached through a relay: the ``relay:<public key>`` form of a worker's
address (or ``via = "relay"`` in its ``[[workers]]`` table), and the Main's ``relay`` and
``relay_key`` settings, each checked (a ``ConfigError`` naming the setting)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distrib._errors import ConfigError
from distrib.wire import _keys

RELAYED = "relay:"  # a worker's address: reached through the relay, by its public key


def string(name: str, raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{name}: expected a non-empty string, got {raw!r}")
    return raw


def relay(name: str, raw: Any) -> str:
    """The relay a Main reaches workers through: "host:port"."""
    host, _, port = str(raw).strip().removeprefix("tcp://").rpartition(":")
    if not isinstance(raw, str) or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name}={raw!r}: expected the relay's \"host:port\"")
    return f"{host}:{int(port)}"


def relay_key(name: str, raw: Any) -> str:
    """The relay's public key: the key itself, or its .pub file."""
    text = string(name, raw).strip()
    if os.path.isfile(text):
        return _keys.read_public_file(Path(text))
    return _keys.check_public(text, name)


def via(name: str, item: dict[str, Any]) -> dict[str, Any]:
    """A [[workers]] table with ``via = "relay"``: its address is ``relay:<public_key>``."""
    if "via" not in item:
        return item
    item = dict(item)
    how = item.pop("via")
    if how != "relay" or "address" in item or not isinstance(item.get("public_key"), str):
        raise ConfigError(f"{name}: via = {how!r}: expected via = \"relay\" with the worker's "
                          "public_key and no address (it is reached by its key)")
    item["address"] = RELAYED + item["public_key"]
    return item


def relayed(address: str, public_key: str | None) -> tuple[str, str | None]:
    """A worker's address and key, with ``relay:KEY`` checked: its key is the one given."""
    if not address.startswith(RELAYED):
        return address, public_key
    key = _keys.check_public(address.removeprefix(RELAYED), address)
    if public_key is not None and _keys.check_public(public_key, address) != key:
        raise ConfigError(f"worker {address!r}: its public_key is another key; give one")
    return RELAYED + key, key


def check_relayed(source: str, addresses: list[str], relay: str | None,
                  relay_key: str | None) -> None:
    """Workers reached through the relay need one, and its key."""
    through = [a for a in addresses if a.startswith(RELAYED)]
    if through and relay is None:
        raise ConfigError(f"{source}: worker {through[0]} is reached through a relay: set "
                          "[main] relay = \"host:port\" (or DISTRIB_RELAY)")
    if relay is not None and relay_key is None:
        raise ConfigError(f"{source}: relay = {relay!r} needs the relay's public key: set "
                          "[main] relay_key (or DISTRIB_RELAY_KEY) to it or to its .pub file")

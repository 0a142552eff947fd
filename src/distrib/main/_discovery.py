"""Which workers found on the LAN this Main may use: discovery is not trust.

A discovered worker is used only if its announced key is listed in ``[discovery] trust``, or,
with ``trust_on_first_use``, if it is the key first seen at that address (remembered in the
cache folder's ``known_workers``; a different key later is refused).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from distrib._config import Settings

if TYPE_CHECKING:  # (zeroconf costs 27 ms to import: only a Main that discovers pays it)
    from distrib.wire._mdns import Found

log = logging.getLogger("distrib")


def verdict(found: Found, settings: Settings) -> str:
    """Empty if ``found`` may be used, else why not."""
    d = settings.discovery
    if found.public_key is None:
        return "it announces no key, so it cannot be authenticated; not used"
    if settings.key is None:
        return "this Main has no key ([main] key); not used"
    if found.public_key in d.trust:
        return ""
    if not d.trust_on_first_use:
        return (f"its key {found.public_key} is not trusted; add it to [discovery] trust "
                "(or set trust_on_first_use = true); not used")
    known_file = settings.cache_dir / "known_workers"
    known = _read_known(known_file)
    if found.address in known and known[found.address] != found.public_key:
        return (f"it announces key {found.public_key}, but the key first seen at that "
                f"address was {known[found.address]} ({known_file}); not used")
    if found.address not in known:
        known_file.parent.mkdir(parents=True, exist_ok=True)
        with open(known_file, "a") as f:
            f.write(f"{found.address} {found.public_key}\n")
        log.warning("trusting worker %s at %s on first use (key %s, remembered in %s)",
                    found.name, found.address, found.public_key, known_file)
    return ""


def _read_known(path: Path) -> dict[str, str]:
    known = {}
    if path.exists():
        for line in path.read_text().splitlines():
            address, _, key = line.partition(" ")
            known[address] = key
    return known

"""Where launched workers dial, and how they are let in: what every launcher is given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Target:
    """Where launched workers dial, and how they are let in."""

    port: int  # the Main listens on 127.0.0.1:port
    main_key: str  # the Main's public key (the workers check it)
    authorized: Path  # the Main's authorized workers: each launched worker's key goes there
    cache: Path  # the Main's cache folder (wheels are built there)
    packages: tuple[str, ...] = ()  # the workspace's packages, sent as wheels too

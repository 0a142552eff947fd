"""The ZAP check of distrib's CURVE servers (a worker for its Mains, a listening Main for its
workers, a relay for its parties): libzmq asks the ZAP socket about every handshake, the answer
lets the client's public key through or refuses it, and a refused key is worth one log line a
minute (a refused client tries again and again)."""

from __future__ import annotations

import time

from msgspec import Struct
from zmq.utils import z85

ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks (bound before the server socket)
REFUSAL_LOG_EVERY = 60.0  # seconds between two log lines of one refused key
REFUSALS_KEPT = 1_000  # keys remembered for that (a stranger may make up a key a try)


class Request(Struct, frozen=True):
    """One ZAP request: who asks to come in (RFC 27's frames)."""

    frames: list[bytes]

    @property
    def curve(self) -> bool:
        """The client used CURVE (with its public key)."""
        return len(self.frames) > 6 and self.frames[5] == b"CURVE"

    @property
    def key(self) -> str:
        """The client's public key, z85 ("" without CURVE)."""
        return z85.encode(self.frames[6]).decode() if self.curve else ""

    @property
    def address(self) -> str:
        """Where it connects from, as libzmq says it."""
        return self.frames[3].decode(errors="replace") if len(self.frames) > 3 else ""

    def answer(self, ok: bool) -> list[bytes]:
        """The reply's frames: the key through (it names the connection's messages), or
        refused."""
        version, request_id = self.frames[0], self.frames[1]
        return [version, request_id, b"200" if ok else b"400",
                b"OK" if ok else b"key not authorized", self.key.encode(), b""]


class Refusals:
    """Which refused keys to log now: each at most once per ``REFUSAL_LOG_EVERY``."""

    def __init__(self) -> None:
        self._logged: dict[str, float] = {}

    def due(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._logged.get(key, -1e9) <= REFUSAL_LOG_EVERY:
            return False
        if len(self._logged) >= REFUSALS_KEPT:
            self._logged.clear()
        self._logged[key] = now
        return True

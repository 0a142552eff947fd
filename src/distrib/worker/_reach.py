"""How Mains reach this worker besides its listening socket: the Mains it dials (``--connect``,
or ``connect`` in the policy file), the relay it is reached through (``--relay``, or
``relay``), the keys both let in, and, for a launched worker, its stop once no Main it dials
has been connected for ``--exit-without-main`` seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq

from distrib.wire import _messages as m
from distrib.worker._dials import Dials
from distrib.worker._gate import Gate
from distrib.worker._mains import Mains
from distrib.worker._relaying import Exposure
from distrib.worker._settings import WorkerSettings

log = logging.getLogger("distrib.worker")


class Reach:
    """The dialled Mains and the relay's party, as the flags and the policy file say."""

    def __init__(self, ctx: zmq.Context[Any], settings: WorkerSettings, gate: Gate,
                 address: str, hello: Callable[[], m.Dial],
                 receive: Callable[[bytes, list[Any], str], None],
                 closed: Callable[[bytes, str], None], now: float) -> None:
        self.settings, self.gate, self.address = settings, gate, address
        self.dials = Dials(ctx, settings.key, settings.connect, hello, receive, closed)
        self.relayed: Exposure | None = None
        self.on_relayed: Callable[[Exposure | None], None] = lambda _: None
        self._main_seen = now  # (a dialled Main last connected, or the start)

    def set_dials(self, targets: tuple[tuple[str, str], ...]) -> None:
        """The policy file names other Mains to dial: dial those, stop dialling the others."""
        if targets and self.settings.key is None:
            log.warning("the policy file names Mains to dial (connect), but this worker has no "
                        "key (--key): not dialling them")
            return
        self.gate.dialled = frozenset(key for _, key in targets)
        self.dials.set_targets(targets)
        self.keys_changed()

    def set_relay(self, relay: tuple[str, str] | None) -> None:
        """Be reached through ``relay`` (the flags or the policy file say), or through none."""
        if self.relayed is not None:
            self.relayed.close()
            self.relayed = None
        key = self.settings.key
        if relay is not None and key is None:
            log.warning("the policy file names a relay, but this worker has no key (--key): "
                        "not reached through it")
        elif relay is not None and key is not None:
            self.relayed = Exposure(relay, key, self.address, self.gate.main_keys())
        self.on_relayed(self.relayed)

    def keys_changed(self) -> None:
        """The Mains that may connect changed: the relay takes splices from those alone."""
        if self.relayed is not None:
            self.relayed.allow(self.gate.main_keys())

    def tick(self, now: float, mains: Mains) -> bool:
        """Dial again where due; whether this worker is to stop (``--exit-without-main``)."""
        self.dials.tick(now, mains, self.settings.lost_after)
        alone = self.settings.exit_without_main
        if alone is None:  # (a launched worker sets it: its Main may be gone for good)
            return False
        if any(t.peer for t in self.dials.targets):
            self._main_seen = now
        elif now - self._main_seen > alone:
            log.warning("no Main it dials has been connected for %.0f s "
                        "(--exit-without-main); stopping", alone)
            return True
        return False

    def close(self) -> None:
        self.dials.close()
        if self.relayed is not None:
            self.relayed.close()

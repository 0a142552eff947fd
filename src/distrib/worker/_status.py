"""What a worker says of itself: its status (facts, load, counters, disk use; ``distrib
status`` and the tests read it), the Mains it serves, and a periodic log line saying which of
them hold the slots."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from distrib.wire import _facts
from distrib.wire._keys import KeyPair

if TYPE_CHECKING:  # (only for types: they are the daemon's parts it reports on)
    from distrib.worker._core import Core
    from distrib.worker._dials import Dials
    from distrib.worker._executors import Executors
    from distrib.worker._gate import Gate
    from distrib.worker._mains import Mains
    from distrib.worker._owner import Owner
    from distrib.worker._redistribution import Calls
    from distrib.worker._relaying import Exposure
    from distrib.worker._serving import Serving
    from distrib.worker._supply import Supply

log = logging.getLogger("distrib.worker")

SERVED_LOG_EVERY = 60.0  # seconds between log lines saying which Mains hold the slots


class StatusBuilder:
    """A worker's status, as it stands: what its ``Status`` message carries."""

    def __init__(self, name: str, worker_id: str, address: str, key: KeyPair | None,
                 now: float, core: Core, mains: Mains, gate: Gate, owner: Owner,
                 executors: Executors, supply: Supply, serving: Serving, calls: Calls,
                 dials: Dials, relayed: Exposure | None = None) -> None:
        self.name = name
        self.worker_id = worker_id
        self.address = address
        self.key = key
        self.core = core
        self.mains = mains
        self.gate = gate
        self.owner = owner
        self.executors = executors
        self.supply = supply
        self.serving = serving
        self.calls = calls
        self.dials = dials
        self.relayed = relayed  # its party at a relay (--relay), if any
        self._served_logged = now  # when the log last said who holds the slots

    def set_relayed(self, relayed: Exposure | None) -> None:
        """Its party at a relay changed (the flags or the policy file)."""
        self.relayed = relayed

    def served(self) -> list[dict[str, Any]]:
        """Each Main served: its name, key (the first 8 characters), the slots its tasks
        hold, its tasks waiting here, its quota, which way its link goes ("in": it dialled
        this worker; "out to host:port": this worker dialled it), and how many messages
        wait for its connection to take them."""
        held = self.core.held()
        return [{"name": main.name, "key": main.key[:8], "held": held.get(peer, 0),
                 "queued": self.core.waiting(peer), "quota": str(self.gate.quota(main.key)),
                 "link": f"out to {out}" if (out := self.dials.address(peer)) else "in",
                 # messages its connection did not take yet (``_backlog``): its tasks wait
                 "unsent": self.serving.backlog.size(peer)}
                for peer, main in self.mains.items()]

    def tick(self, now: float) -> None:
        """Now and then, log which Mains hold the slots."""
        if self.mains and now - self._served_logged > SERVED_LOG_EVERY:
            self._served_logged = now
            log.info("serving %s", "; ".join(
                f"Main {x['name']}{' (key ' + x['key'] + '...)' if x['key'] else ''}: "
                f"{x['held']} slot(s), {x['queued']} waiting" for x in self.served()))

    def status(self) -> dict[str, Any]:
        """Facts, load and counters, as ``distrib status`` and tests read them. Disk use is
        as last measured (``disk_age_s`` ago; none before the first measure ends)."""
        supply, core, mains = self.supply, self.core, self.mains
        disk, disk_age = supply.disk_use.get()
        state, why = self.owner.state.effective()
        return {
            "name": self.name,
            "worker_id": self.worker_id,
            "address": self.address,
            "platform": _facts.platform_tag(),
            "python": _facts.python_version(),
            "pid": os.getpid(),
            "slots": core.capacity,
            "busy": core.busy,
            "parked": sum(ex.parked for ex in core.executors.values()),
            "queued": core.waiting(),
            # handed to a busy executor, then cancelled or dropped: its skip not confirmed yet
            "withdrawing": sum(run.withdrawn is not None for ex in core.executors.values()
                               for run in ex.runs),
            "mains": [x.name for x in mains.values()],
            "held": {mains[peer].name: n for peer, n in core.held().items()
                     if peer in mains},
            "executors": [proc.pid for proc in self.executors.procs.values() if proc.pid],
            "templates": [t.proc.pid for t in self.executors.forks.templates.values()],
            "public_key": self.key.public if self.key else None,
            "blobs_received": supply.dists.blobs_received,
            "dropped": self.serving.dropped,
            "reruns": self.serving.reruns,
            "dropped_connections": self.gate.dropped_connections,
            "pythons": supply.envs.versions(),
            "state": state,
            "why": why,
            "policy": self.owner.policy.describe(),
            "quotas": {main.name: core.limits[core.account(peer)]
                       for peer, main in mains.items() if core.account(peer) in core.limits},
            "objects": supply.objects.held(),
            "served": self.served(),
            "dials": self.dials.status(),  # the Mains it dials (--connect), and how each stands
            # the relay it is reached through (--relay): registered there, or why not
            "relay": self.relayed.status() if self.relayed is not None else None,
            **(disk or {}),
            "disk_age_s": round(disk_age, 1) if disk is not None else None,
            **core.counters,
            **supply.objects.counters,
            **self.calls.direct.status(),
            **supply.envs.counters,
        }

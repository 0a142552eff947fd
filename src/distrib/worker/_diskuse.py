"""Disk use for status queries, measured in a thread of its own: a walk of the store and the
built environments takes tens of milliseconds per ten thousand files, and a peer asking for
status in a loop must not stall the daemon's loop (and every Main it serves) with it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from distrib.worker._envs import Environments
from distrib.workspace._store import Store

log = logging.getLogger("distrib.worker")

T = TypeVar("T")


class DiskUse(Generic[T]):
    """The last value of ``measure`` and its age; asked when older than ``max_age``, it is
    measured again in the background, one measure at a time. Nothing is measured until asked:
    a worker no one queries never walks its disk. Once asked, a change (``refresh``) is
    measured at once, so that the next query does not read what was there before it."""

    def __init__(self, measure: Callable[[], T], max_age: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._measure, self._max_age, self._clock = measure, max_age, clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._at = float("-inf")  # when the measure that gave the value began
        self._tried = float("-inf")  # when the last measure began (a failed one too)
        self._stale = False  # changed since the last measure began
        self._running = False
        self._asked = False  # someone queries this worker: changes are measured as they come
        self.measures = 0  # measures started

    def get(self) -> tuple[T | None, float]:
        """The last value (None before the first measure ends) and its age in seconds; never
        waits for a measure."""
        with self._lock:
            now = self._clock()
            self._asked = True
            if self._stale or now - self._tried > self._max_age:
                self._start(now)
            return self._value, max(0.0, now - self._at)

    def refresh(self) -> None:
        """What is measured changed (a workspace or an environment came or went): measured
        again now if this worker has been asked before (else at the first query)."""
        with self._lock:
            self._stale = True
            if self._asked:
                self._start(self._clock())

    def _start(self, now: float) -> None:
        """(under the lock) A measure in the background, unless one is running (it measures
        again as it ends if a change came meanwhile)."""
        if self._running:
            return
        try:
            threading.Thread(target=self._run, args=(now,), name="distrib-disk-use",
                             daemon=True).start()
        except RuntimeError:  # (no thread to be had now: asked again later)
            return
        self._running, self._stale, self._tried = True, False, now
        self.measures += 1

    def _run(self, started: float) -> None:
        try:
            value = self._measure()
        except Exception:  # (a status is not worth stopping for: keep the last value)
            log.exception("could not measure the disk use")
            with self._lock:
                self._running = False
            return
        with self._lock:
            self._value, self._at, self._running = value, started, False
            if self._stale:  # changed while it was measured
                self._start(self._clock())


def measure_disk(envs: Environments, store: Store) -> dict[str, Any]:
    """(in the disk-use thread) What the store and the built environments take."""
    envs_built, envs_bytes = envs.disk_use()
    return {"workspaces_cached": sum(1 for _ in store.envs.glob("[!.]*")),
            "workspaces_bytes": store.usage(),
            "envs_cached": envs_built, "envs_bytes": envs_bytes}

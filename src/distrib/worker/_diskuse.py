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
    """The last value of ``measure`` and its age; asked when older than ``max_age`` or after
    a change (``refresh``), it is measured again in the background, one measure at a time.
    Nothing is measured until asked: a worker no one queries never walks its disk."""

    def __init__(self, measure: Callable[[], T], max_age: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._measure, self._max_age, self._clock = measure, max_age, clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._at = float("-inf")  # when the measure that gave the value began
        self._tried = float("-inf")  # when the last measure began (a failed one too)
        self._stale = False  # changed since the last measure began
        self._running = False
        self.measures = 0  # measures started

    def get(self) -> tuple[T | None, float]:
        """The last value (None before the first measure ends) and its age in seconds; never
        waits for a measure."""
        with self._lock:
            now = self._clock()
            if not self._running and (self._stale or now - self._tried > self._max_age):
                try:
                    threading.Thread(target=self._run, args=(now,), name="distrib-disk-use",
                                     daemon=True).start()
                except RuntimeError:  # (no thread to be had now: asked again later)
                    pass
                else:
                    self._running, self._stale, self._tried = True, False, now
                    self.measures += 1
            return self._value, max(0.0, now - self._at)

    def refresh(self) -> None:
        """What is measured changed (a workspace or an environment came or went): the next
        query measures again."""
        with self._lock:
            self._stale = True

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


def measure_disk(envs: Environments, store: Store) -> dict[str, Any]:
    """(in the disk-use thread) What the store and the built environments take."""
    envs_built, envs_bytes = envs.disk_use()
    return {"workspaces_cached": sum(1 for _ in store.envs.glob("[!.]*")),
            "workspaces_bytes": store.usage(),
            "envs_cached": envs_built, "envs_bytes": envs_bytes}

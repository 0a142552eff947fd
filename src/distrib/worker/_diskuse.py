"""Disk use for status queries, measured in a thread of its own: a walk of the store and the
built environments takes tens of milliseconds per ten thousand files, and a peer asking for
status in a loop must not stall the daemon's loop (and every Main it serves) with it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("distrib.worker")

T = TypeVar("T")


class DiskUse(Generic[T]):
    """The last value of ``measure`` and its age; asked when older than ``max_age``, or told
    that it changed (``refresh``), it is measured again in the background (one measure at a
    time: a change during one makes one more)."""

    def __init__(self, measure: Callable[[], T], max_age: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._measure, self._max_age, self._clock = measure, max_age, clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._at = float("-inf")  # when the value was measured
        self._running = False
        self._again = False  # changed during the running measure
        self.measures = 0  # measures started

    def get(self) -> tuple[T | None, float]:
        """The last value (None before the first measure ends) and its age in seconds; never
        waits for a measure."""
        now = self._clock()
        with self._lock:
            if now - self._at > self._max_age and not self._running:
                self._start()
            return self._value, now - self._at

    def refresh(self) -> None:
        """What is measured changed (a workspace or an environment came or went): measure
        again now, so that the next status has it."""
        with self._lock:
            if self._running:
                self._again = True
            else:
                self._start()

    def _start(self) -> None:  # (with the lock held)
        self._running, self._again = True, False
        self.measures += 1
        threading.Thread(target=self._run, name="distrib-disk-use", daemon=True).start()

    def _run(self) -> None:
        try:
            value = self._measure()
        except Exception:  # (a status is not worth stopping for: keep the last value)
            log.exception("could not measure the disk use")
            with self._lock:
                self._running = False
            return
        with self._lock:
            self._value, self._at, self._running = value, self._clock(), False
            if self._again:
                self._start()

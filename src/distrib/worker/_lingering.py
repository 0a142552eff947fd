"""A daemon that leaves on its own after a while with no Main: the local cluster's, with the
Main's ``linger`` setting, waiting for its user's next script (``distrib._linger``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from distrib._linger import users_gone

log = logging.getLogger("distrib.worker")


class Lingering:
    """Counts the time with no Main; ``over()`` says when the daemon leaves."""

    def __init__(self, seconds: float, users: Path | None, now: float) -> None:
        self.seconds = seconds
        self.users = users  # the Mains' lock: held (shared) by each Main using this daemon
        self.since = now  # no Main since (a Main attaching is not one yet)
        self._held: int | None = None  # the lock, once taken: kept until the daemon is gone

    def over(self, has_mains: bool, now: float) -> bool:
        """Whether the daemon leaves now: no Main for ``seconds``, and (with the lock) none
        uses it nor is attaching; from then on new Mains wait until it is gone."""
        if has_mains:
            self.since = now
            return False
        if now - self.since < self.seconds:
            return False
        if self.users is not None:
            self._held = users_gone(self.users)
            if self._held is None:  # (a Main is attaching: the wait starts again)
                self.since = now
                return False
        log.info("no Main for %.0f s; leaving", now - self.since)
        return True

    def close(self) -> None:
        if self._held is not None:
            os.close(self._held)
            self._held = None

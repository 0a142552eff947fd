"""A daemon that leaves on its own after a while with no Main: the local cluster's, with the
Main's ``linger`` setting, waiting for its user's next script (``distrib._linger``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from distrib._linger import users_gone

log = logging.getLogger("distrib.worker")


def _inode(path: Path | None) -> int | None:
    try:
        return None if path is None else os.stat(path).st_ino
    except OSError:
        return None


class Lingering:
    """Counts the time with no Main; ``over()`` says when the daemon leaves."""

    def __init__(self, seconds: float, users: Path | None, now: float,
                 socket: Path | None = None) -> None:
        self.seconds = seconds
        self.users = users  # the Mains' lock: held (shared) by each Main using this daemon
        self.since = now  # no Main since (a Main attaching is not one yet)
        self.socket = socket  # the Unix socket it listens on, if any
        self._inode = _inode(socket)
        self._held: int | None = None  # the lock, once taken: kept until the daemon is gone

    def over(self, has_mains: bool, now: float) -> bool:
        """Whether the daemon leaves now: no Main for ``seconds``, and (with the lock) none
        uses it nor is attaching; from then on new Mains wait until it is gone. With no Main,
        a daemon whose socket was removed or replaced (no Main can reach it) leaves at once."""
        if has_mains:
            self.since = now
            return False
        if self.socket is not None and _inode(self.socket) != self._inode:
            log.info("its socket %s was removed or replaced; leaving", self.socket)
            return True
        if now - self.since < self.seconds:
            return False
        if self.users is not None:
            try:
                self._held = users_gone(self.users)
            except OSError as exc:  # (its folder was removed: no Main finds it)
                log.info("cannot open %s (%s); leaving", self.users, exc.strerror)
                return True
            if self._held is None:  # (a Main is attaching: the wait starts again)
                self.since = now
                return False
        log.info("no Main for %.0f s; leaving", now - self.since)
        return True

    def close(self) -> None:
        if self._held is not None:
            os.close(self._held)
            self._held = None

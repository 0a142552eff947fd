"""The interpreter the daemon keeps started ahead for its next template (a ``Zygote``): when
to start one, and giving up on them when they keep dying."""

from __future__ import annotations

import logging

from distrib.worker._pool import Zygote

log = logging.getLogger("distrib.worker")

DEATHS = 5  # interpreters started ahead that die unused before no more are started
# Seconds after a template was last importing before the next interpreter is started ahead:
# the Main it was for is starting its tasks then, and an interpreter starting beside them
# would take a core from them (and from a short-lived worker, for a template never used).
QUIET = 3.0


class Ahead:
    """The interpreter started ahead, if any, and when one may be started next."""

    def __init__(self) -> None:
        self.enabled = True  # (not where templates are sandboxed: they start their own)
        self.zygote: Zygote | None = None
        self._deaths = 0  # ones that died before a template took them
        self._importing_at = -QUIET  # when a template was last importing

    def take(self, now: float) -> Zygote | None:
        """The interpreter for a template that starts importing now (None: it starts its own)."""
        zygote, self.zygote = self.zygote, None
        self._importing_at = now
        return zygote

    def keep(self, now: float, importing: bool, nice: int) -> None:
        """Start one if none is kept and no template (``importing``: one is now) has been
        importing for a while."""
        zygote = self.zygote
        if zygote is not None and zygote.proc.poll() is not None:
            zygote.kill()  # (it died: reaped, and replaced, unless they keep dying)
            self.zygote = None
            self._deaths += 1
            if self._deaths == DEATHS:
                log.warning("the interpreters started ahead for templates keep dying; "
                            "templates start their own (about 0.1 s more at a first call)")
        if importing:
            self._importing_at = now
        elif (self.zygote is None and self.enabled and self._deaths < DEATHS
              and now - self._importing_at >= QUIET):
            try:
                self.zygote = Zygote(nice)
            except OSError as exc:
                log.debug("cannot start an interpreter ahead: %s", exc)

    def pids(self) -> set[int]:
        return {self.zygote.proc.pid} if self.zygote is not None else set()

    def drop(self) -> None:
        """End the one kept (a new one starts at the next ``keep``)."""
        if self.zygote is not None:
            self.zygote.kill()
            self.zygote = None

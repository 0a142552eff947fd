"""Log lines a remote peer can trigger, rate-limited so that no peer can fill a disk.

A misbehaving client opening garbage connections in a loop once wrote 6.6 million lines in five
minutes. Each kind of line here is written at most ``burst`` times per ``window`` seconds; what
is held back is counted and said in one line when the window ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


class RateLimited:
    """Rate-limited ``warning``/``info`` on ``logger``, per kind of line (its format string)."""

    def __init__(self, logger: logging.Logger, burst: int = 10, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log, self._burst, self._window, self._clock = logger, burst, window, clock
        self._kinds: dict[str, list[float]] = {}  # format -> [window start, lines, held back]

    def warning(self, msg: str, *args: Any) -> None:
        self._emit(logging.WARNING, msg, args)

    def info(self, msg: str, *args: Any) -> None:
        self._emit(logging.INFO, msg, args)

    def _emit(self, level: int, msg: str, args: tuple[Any, ...]) -> None:
        if not self._log.isEnabledFor(level):
            return
        now = self._clock()
        kind = self._kinds.setdefault(msg, [now, 0, 0])
        if now - kind[0] >= self._window:
            if kind[2]:
                self._log.log(level, "(%d more like \"%s\" in the last %.0f s, not logged)",
                              kind[2], msg.split(":")[0], now - kind[0])
            kind[:] = [now, 0, 0]
        if kind[1] < self._burst:
            kind[1] += 1
            self._log.log(level, msg, *args)
        else:
            kind[2] += 1

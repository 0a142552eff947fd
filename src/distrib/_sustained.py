"""A condition that must hold for a while before it counts (a deadlock, say, rather than a
moment when every slot happens to wait)."""

from __future__ import annotations


class Sustained:
    """Whether a condition, checked now and then, has held for ``seconds`` without a break."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._since: float | None = None

    def check(self, holds: bool, now: float) -> bool:
        """True once it has held for ``seconds`` (then it starts over)."""
        if not holds:
            self._since = None
            return False
        if self._since is None:
            self._since = now
        if now - self._since < self.seconds:
            return False
        self._since = None
        return True

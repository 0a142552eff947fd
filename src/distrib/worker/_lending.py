"""Whether the machine is lent right now: the owner's hours, and (``when_idle``) whether the
owner's own programs leave it idle.

The load of "other programs" is the machine's busy CPU time less that of this daemon and every
process under it (executors, the tasks' own children, environment builds), sampled once a
second. The owner counts as back after ``BUSY_AFTER`` samples in a row above ``idle_load``, and
as gone after ``CALM_AFTER`` in a row below it, so a short burst does not stop the lending and a
short lull does not restart it.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil  # (imported at the first sample: only when_idle samples the load)

from distrib.worker._policy import Policy

SAMPLE_EVERY = 1.0  # seconds
BUSY_AFTER = 2  # samples in a row above the idle load: the owner is back
CALM_AFTER = 4  # samples in a row at or below it: the machine is idle again


def _busy_seconds() -> float:
    import psutil

    t = psutil.cpu_times()
    # (guest time is part of user time already; steal is another machine's)
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0)
                 + getattr(t, "softirq", 0.0))


def _tree_seconds(root: psutil.Process) -> float:
    """CPU seconds of ``root`` and every process under it, with the children each reaped."""
    import psutil

    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue  # (gone: its time is now its parent's children time)
        total += t.user + t.system + t.children_user + t.children_system
    return total


class Lending:
    """Answers "may tasks run here now, and if not, why not?" for the current policy."""

    def __init__(self, policy: Policy, clock: Callable[[], datetime.datetime] = datetime.datetime.now
                 ) -> None:
        self.policy = policy
        self._clock = clock
        self._me: psutil.Process | None = None  # (this daemon, and its cores: at the first sample)
        self._cores = 1
        self._last: tuple[float, float, float] | None = None  # (time, machine busy, ours)
        self._above = 0
        self._below = 0
        self._busy_since = ""  # why it does not lend, as said when the owner came back ("":
        # the owner is away)
        self.others = 0.0  # the last sample: share of the cores other programs used

    def check(self) -> str:
        """Why the machine is not lent now ("": it is)."""
        hours = self.policy.hours
        if hours is not None and not hours.open(self._clock()):
            self._reset()  # (the load is measured afresh when the hours open)
            return f"outside its lending hours ({hours.text})"
        if self.policy.when_idle is None:
            self._reset()
            return ""
        self._sample()
        return self._busy_since

    def _reset(self) -> None:
        self._last, self._above, self._below = None, 0, 0
        self._busy_since = ""

    def _sample(self) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < SAMPLE_EVERY:
            return
        if self._me is None:
            import psutil

            self._me = psutil.Process(os.getpid())
            self._cores = psutil.cpu_count() or 1
        busy, ours = _busy_seconds(), _tree_seconds(self._me)
        last, self._last = self._last, (now, busy, ours)
        if last is None:
            return
        spent = (busy - last[1]) - (ours - last[2])
        self.others = max(0.0, min(1.0, spent / ((now - last[0]) * self._cores)))
        if self.others > self.policy.idle_load:
            self._above, self._below = self._above + 1, 0
        else:
            self._above, self._below = 0, self._below + 1
        if not self._busy_since and self._above >= BUSY_AFTER:
            self._busy_since = (
                f"its owner's own programs use {self.others:.0%} of the cores (it lends only "
                f"while they use under {self.policy.idle_load:.0%}: its when_idle)")
        elif self._busy_since and self._below >= CALM_AFTER:
            self._busy_since = ""

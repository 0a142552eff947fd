"""Backup copies of straggling tasks (``@distributed(speculative=True)``), the policy: pure.

When a run's last tasks wait on a slow or stuck worker while slots elsewhere are idle, a
second copy of such a task starts elsewhere and whichever copy ends first is its outcome
(MapReduce's backup tasks). This module decides which running tasks count as stragglers;
the Main's I/O thread (``_loop``) asks it at each tick once nothing is pending, starts the
copies (``Scheduler.start_copy``) and cancels the losers. No clock and no sockets here: the
time is an argument.

A task straggles when it has waited on its worker (running there, as the Main reckons it,
or queued behind tasks that do not end) longer than ``MULTIPLE`` times the median run time
of its function's recent runs, and at least ``FLOOR`` seconds; its function must
have ``MIN_SAMPLES`` measured runs (before that, a long task cannot be told from a stuck
one). Each task gets one copy at most. docs/design.md ("Backup copies of stragglers") has
the measurements behind these numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TypeVar

from msgspec import Struct

from distrib.wire._messages import Outcome

K = TypeVar("K")

MULTIPLE = 1.5  # a run this many times its function's median is late (Spark's default)
FLOOR = 0.5  # seconds: never earlier (round trips, a tick, a worker busy for a moment)
MIN_SAMPLES = 3  # measured runs of the function before any of its tasks is judged
WINDOW = 64  # recent runs kept per function


class Policy(Struct, frozen=True):
    """When a running task counts as a straggler (see the module's docstring)."""

    multiple: float = MULTIPLE
    floor: float = FLOOR
    min_samples: int = MIN_SAMPLES

    def limit(self, median: float) -> float:
        """Seconds on its worker after which a task whose function's median is ``median``
        straggles."""
        return max(self.floor, self.multiple * median)


class Durations:
    """Recent run times of each function, as its workers measured them (the ``ran`` of a
    result: from the start of the run, not counting the time queued)."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._runs: dict[str, deque[float]] = {}
        self._median: dict[str, float] = {}  # (cached until the next run is added)

    def add(self, name: str, seconds: float) -> None:
        runs = self._runs.get(name)
        if runs is None:
            runs = self._runs[name] = deque(maxlen=self.window)
        runs.append(seconds)
        self._median.pop(name, None)

    def any(self) -> bool:
        """Whether any run was measured (else no task can straggle)."""
        return bool(self._runs)

    def count(self, name: str) -> int:
        runs = self._runs.get(name)
        return len(runs) if runs is not None else 0

    def median(self, name: str) -> float | None:
        """The median of ``name``'s recent runs, or None if none was measured."""
        found = self._median.get(name)
        if found is None and self._runs.get(name):
            import statistics  # (here: with fractions and decimal, 5 ms of every Main's start)

            found = self._median[name] = statistics.median(self._runs[name])
        return found


def stragglers(now: float, running: Iterable[tuple[K, str, float]], durations: Durations,
               policy: Policy = Policy()) -> list[K]:
    """The keys of the ``running`` tasks (key, function's name, since when it waits on its
    worker: ``Scheduler.running_speculative``) that straggle at ``now``, the latest first."""
    late: list[tuple[float, K]] = []
    for key, name, sent in running:
        if durations.count(name) < policy.min_samples:
            continue
        median = durations.median(name)
        assert median is not None
        over = (now - sent) - policy.limit(median)
        if over > 0:
            late.append((over, key))
    late.sort(key=lambda item: item[0], reverse=True)
    return [key for _, key in late]


def decisive(status: Outcome, environment_problem: bool) -> bool:
    """Whether a copy's outcome is the task's: a result, the function's own error or a
    timeout. A crash, a deferral, a cancel or a worker lacking the environment ends that copy
    alone while another still runs (it would have been retried)."""
    if status is Outcome.ERROR:
        return not environment_problem
    return status in (Outcome.OK, Outcome.TIMEOUT)

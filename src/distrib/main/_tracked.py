"""What the Main's scheduler tracks: a submitted call (``Task``), a connected worker
(``WorkerView``) and how far ahead of its slots it is sent tasks (``ahead``), and the slot
figures it publishes. Plain data: the decisions are ``_scheduler``'s.
"""

from __future__ import annotations

import fnmatch
import functools
from typing import Any, Protocol

from msgspec import Struct, field

from distrib.main._ranks import Requirement


class Ranked(Protocol):
    """The scheduler a worker joined, as the worker tells it of a change of its rank."""

    def touch(self, worker: WorkerView) -> None: ...


MAX_QUEUED = 2048  # per worker, beyond its slots
# What a worker's rank or its ability to take a task depends on: setting any of these tells
# the scheduler (``WorkerView.__setattr__``), wherever the change is made.
RANKED = frozenset({"slots", "inflight_slots", "lent", "rate", "round_trip", "full",
                    "paused", "unable", "memory_limit", "pythons", "python", "platform"})


@functools.lru_cache(maxsize=4096)
def _platform_matches(platform: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(platform, g) for g in globs)


class Task(Struct, eq=False):
    """A submitted call as the Main tracks it until its outcome is known."""

    task_id: int
    name: str
    frames: list[Any]
    platforms: tuple[str, ...]
    threads: int
    retries: int
    timeout: float | None
    response: Any = None
    outputs: tuple[str, ...] = ()  # globs: its result comes with the files it wrote
    attempts: int = 0  # runs that ended in a crash or a lost worker
    memory: int = 0  # it was stopped for passing this memory limit: it needs a higher one
    shared: dict[str, Any] | None = None  # the Shared it passes
    # its payload with the large frames in /dev/shm (made at its first send to a worker on
    # this machine; the files go with the task): (frames, name -> index)
    in_shm: tuple[list[Any], dict[str, int], Any] | None = None
    link: str | None = None  # the worker it is on, while in flight
    counted: bool = False  # the dashboard counted its outcome
    depth: int = 0  # a call made inside a task: how deep (1: by a call of the Main's)
    speculative: bool = False  # safe to repeat: a straggling run may get a second copy
    sent: float = 0.0  # when it was last sent to a worker (the I/O thread's clock)
    started: float = 0.0  # when it started there, as the Main reckons (``progressed``); 0: not
    copied: bool = False  # a second copy was started (one at most)

    def __repr__(self) -> str:  # (its frames may be a gibibyte: they are not shown)
        return f"Task({self.task_id}, {self.name!r}, link={self.link!r})"

    @property
    def requirement(self) -> Requirement:
        return (self.platforms, self.threads, self.memory)


class WorkerView(Struct, eq=False):
    """A connected worker as the scheduler sees it."""

    link: str
    name: str
    platform: str
    python: str
    slots: int
    inflight: dict[int, Task] = field(default_factory=dict)
    inflight_slots: int = 0
    finished: int = 0  # outcomes since the last observation
    rate: float = 0.0  # outcomes per second, smoothed
    round_trip: float = 0.0  # seconds of its link's round trip, as measured (0: not yet)
    full: bool = False  # it deferred a task: nothing more until it reports or a tick passes
    pythons: tuple[str, ...] = ()  # the Python versions it runs tasks with
    unable: str = ""  # why it cannot provide this Main's environment (then it gets no tasks)
    memory_limit: int = 0  # bytes one task may use there; 0: no limit
    paused: bool = False  # its owner paused or drains it: it takes no new tasks
    # its tasks that wait for their calls and lent their slots there (``Waiting``)
    parked: set[int] = field(default_factory=set)
    lent: int = 0  # their threads: slots free for other tasks
    progress: float = 0.0  # when it last reported outcomes (kept with speculative tasks only)
    task_seconds: float = 0.0  # a task's run time there, as its results say (smoothed; 0: none
    # yet): how fast it is, whatever it is sent (``rate`` is bounded by what it holds)
    revoking: set[int] = field(default_factory=set)  # its tasks asked back (``Revoke``), in
    # flight until it answers
    # the scheduler it joined, told of each change of a field of RANKED; and the version of
    # its rank there (heap entries of an older stamp are stale)
    owner: Ranked | None = None
    stamp: int = 0

    def __setattr__(self, name: str, value: Any) -> None:
        # (a value set again, as a link's round trip each second, does not touch it)
        if name in RANKED and self.owner is not None and getattr(self, name) != value:
            super().__setattr__(name, value)
            self.owner.touch(self)
        else:
            super().__setattr__(name, value)

    def can_run(self, req: Requirement, python: str, paused_too: bool = False) -> bool:
        """Whether it can take a task of ``req`` now (``paused_too``: or once resumed)."""
        platforms, threads, memory = req
        return (
            not self.unable
            and (paused_too or not self.paused)
            and python in (self.pythons or (self.python,))
            and threads <= self.slots
            and (not memory or not self.memory_limit or self.memory_limit > memory)
            and _platform_matches(self.platform, platforms)
        )


def ahead(slots: int, rate: float, round_trip: float, extra: int = 16) -> int:
    """Tasks a worker is sent beyond its running ones, so that no slot waits for the Main.

    A finished task's replacement arrives a round trip after the task ends (its result goes
    to the Main, the next task comes back); meanwhile the worker finishes ``rate`` x
    ``round_trip`` more (``rate``: its slots over a task's duration, as measured). Twice that
    is queued: a rate held back by a queue too short is what that queue allows, and a queue
    sized at twice the rate allows twice as much, so the depth doubles at each observation
    until the slots are busy. Two rounds of its slots at least (a round trip as long as a
    task), and ~20 ms of tasks more, so tiny tasks travel in large batches instead of a
    message per handful.
    """
    return min(max(2 * slots, extra, int(rate * (0.02 + 2 * round_trip))), MAX_QUEUED)


class SlotFigures(Struct, frozen=True):
    """Slots busy with this Main's tasks and slots offered, across its workers: published
    whole at each tick for other threads (the progress bar) to read without a lock."""

    busy: int = 0
    offered: int = 0
    tasks: int = 0  # this Main's unfinished tasks, waiting or running (a launcher's demand)

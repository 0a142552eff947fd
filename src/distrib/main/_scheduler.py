"""The Main's scheduler, pure: which task goes to which worker, retries, and what is owed.

No sockets and no clock. The session feeds it tasks and worker events and sends what
``assign`` returns. Each worker's queue is kept filled a little beyond its slots (to hide
the network's latency) and no further, so a million pending calls stay here, not on the wire.

Placing a task costs O(log workers): the workers able to take a requirement's tasks sit in a
heap ranked by free slots, then room in their queue (``_ranks``, ``Scheduler.touch``).
"""

from __future__ import annotations

import fnmatch
import functools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from distrib.main._ranks import Ranks, Requirement


MAX_QUEUED = 2048  # per worker, beyond its slots
# What a worker's rank or its ability to take a task depends on: setting any of these tells
# the scheduler (``WorkerView.__setattr__``), wherever the change is made.
RANKED = frozenset({"slots", "inflight_slots", "lent", "rate", "round_trip", "full",
                    "paused", "unable", "memory_limit", "pythons", "python", "platform"})


@functools.lru_cache(maxsize=4096)
def _platform_matches(platform: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(platform, g) for g in globs)


@dataclass(eq=False, slots=True)
class Task:
    """A submitted call as the Main tracks it until its outcome is known."""

    task_id: int
    name: str
    frames: list[Any] = field(repr=False)
    platforms: tuple[str, ...]
    threads: int
    retries: int
    timeout: float | None
    response: Any = field(repr=False, default=None)
    outputs: tuple[str, ...] = ()  # globs: its result comes with the files it wrote
    attempts: int = 0  # runs that ended in a crash or a lost worker
    memory: int = 0  # it was stopped for passing this memory limit: it needs a higher one
    shared: dict[str, Any] | None = field(default=None, repr=False)  # the Shared it passes
    # its payload with the large frames in /dev/shm (made at its first send to a worker on
    # this machine; the files go with the task): (frames, name -> index)
    in_shm: tuple[list[Any], dict[str, int], Any] | None = field(default=None, repr=False)
    link: str | None = None  # the worker it is on, while in flight
    counted: bool = False  # the dashboard counted its outcome
    depth: int = 0  # a call made inside a task: how deep (1: by a call of the Main's)

    @property
    def requirement(self) -> Requirement:
        return (self.platforms, self.threads, self.memory)


@dataclass(eq=False)
class WorkerView:
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
    # the scheduler it joined, told of each change of a field of RANKED; and the version of
    # its rank there (heap entries of an older stamp are stale)
    owner: Scheduler | None = field(default=None, init=False, repr=False)
    stamp: int = field(default=0, init=False, repr=False)

    def __setattr__(self, name: str, value: Any) -> None:
        # (a value set again, as a link's round trip each second, does not touch it)
        if name in RANKED and self.owner is not None and getattr(self, name) != value:
            object.__setattr__(self, name, value)
            self.owner.touch(self)
        else:
            object.__setattr__(self, name, value)

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


@dataclass(frozen=True, slots=True)
class SlotFigures:
    """Slots busy with this Main's tasks and slots offered, across its workers: published
    whole at each tick for other threads (the progress bar) to read without a lock."""

    busy: int = 0
    offered: int = 0
    tasks: int = 0  # this Main's unfinished tasks, waiting or running (a launcher's demand)


class Scheduler:
    """Placement of pending tasks on workers, with a bounded per-worker queue; the workers
    able to take each requirement's tasks are ranked in heaps (``_ranks.Ranks``)."""

    def __init__(self, python: str, extra_depth: int = 16) -> None:
        self.python = python
        self.extra_depth = extra_depth
        self.pending: dict[Requirement, deque[Task]] = {}
        self.workers: dict[str, WorkerView] = {}
        self.slot_figures = SlotFigures()  # (replaced, never changed: see SlotFigures)
        self._ranks: Ranks[WorkerView] = Ranks(self.workers, self._able, self.depth)

    def __len__(self) -> int:
        return sum(len(q) for q in self.pending.values()) + sum(
            len(w.inflight) for w in self.workers.values()
        )

    def add(self, task: Task, front: bool = False) -> None:
        if task.response is not None and not task.response._is_pending():
            return  # cancelled while it was on a worker that then deferred it or was lost
        queue = self.pending.setdefault(task.requirement, deque())
        if front:
            queue.appendleft(task)
        else:
            queue.append(task)

    def join(self, worker: WorkerView) -> None:
        self._ranks.joined(worker)
        self.workers[worker.link] = worker
        worker.owner = self

    def touch(self, worker: WorkerView) -> None:
        """The one hook for a change of what ranks ``worker`` (its inflight slots, lent slots,
        rate, round trip, slots, full, paused, environment, memory limit): its heap entries go
        stale and it is ranked anew before the next placement. Setting a field of RANKED on
        the worker calls it; a change made any other way must call it too."""
        self._ranks.touch(worker)

    def leave(self, link: str, clean: bool = False) -> list[Task]:
        """A worker is gone: requeue its tasks within their retries; return those out of tries.
        ``clean``: it left as its owner asked (drained): no try is counted."""
        worker = self.workers.pop(link, None)
        if worker is None:
            return []
        self._ranks.left(link)
        worker.owner = None  # (its heap entries are stale: it is no longer in ``workers``)
        failed: list[Task] = []
        for task in reversed(list(worker.inflight.values())):
            task.link = None
            task.attempts += not clean
            if task.attempts > task.retries:
                failed.append(task)
            else:
                self.add(task, front=True)
        return failed

    def depth(self, worker: WorkerView) -> int:
        """How many slots' worth of tasks a worker may hold: its slots and what it finishes
        in twice the round trip of its link (``ahead``)."""
        return worker.slots + ahead(worker.slots, worker.rate, worker.round_trip,
                                    self.extra_depth)

    def observe(self, seconds: float) -> None:
        """Update each worker's completion rate over the last ``seconds``, and publish the
        slot figures."""
        if seconds <= 0:
            return
        busy = offered = 0
        for worker in self.workers.values():
            busy += min(worker.inflight_slots, worker.slots)
            offered += worker.slots
            if worker.full:
                worker.full = False
            rate = worker.finished / seconds
            rate = rate if rate > worker.rate else 0.5 * worker.rate + 0.5 * rate
            if rate != worker.rate:
                # Its rank moves only if its depth does: else it is not touched (which would
                # rank every worker anew at each tick).
                depth = self.depth(worker)
                object.__setattr__(worker, "rate", rate)
                if self.depth(worker) != depth:
                    self.touch(worker)
            if worker.finished:
                worker.finished = 0
        self.slot_figures = SlotFigures(busy, offered, len(self))

    def assign(self) -> dict[str, list[Task]]:
        """Move pending tasks to workers with room; return them grouped by worker."""
        out: dict[str, list[Task]] = {}
        for req, queue in self.pending.items():
            if not queue:
                continue
            threads = req[1]
            while queue:
                # Idle slots first (the task starts at once), then room in the queue: the
                # heap's top, as ``max`` over the able workers would pick.
                best = self._ranks.top(req)
                if best is None:
                    break
                # A call made inside a task goes whatever the worker holds: tasks queued there
                # may wait for it (they would not start before it), and the worker's own cap
                # on queued bytes bounds what it takes.
                if (self.depth(best) - best.inflight_slots + best.lent < threads
                        and not queue[0].depth):
                    break
                task = queue.popleft()
                task.link = best.link
                best.inflight[task.task_id] = task
                best.inflight_slots += threads  # (touches it)
                out.setdefault(best.link, []).append(task)
        return out

    def _able(self, worker: WorkerView, req: Requirement) -> bool:
        return not worker.full and worker.can_run(req, self.python)

    def finish(self, link: str, task_id: int) -> Task | None:
        """The worker reported an outcome; forget the task there. None if not in flight."""
        worker = self.workers.get(link)
        if worker is None:
            return None
        task = worker.inflight.pop(task_id, None)
        if task is not None:
            worker.inflight_slots -= task.threads
            if worker.parked and task_id in worker.parked:
                worker.parked.discard(task_id)
                worker.lent -= task.threads
            worker.finished += 1
            worker.full = False
            task.link = None
        return task

    def defer(self, link: str, task: Task) -> None:
        """The worker holds as much of this Main's work as it takes: the task waits here
        (no attempt counted) and the worker gets nothing more until it reports or a tick."""
        worker = self.workers.get(link)
        if worker is not None:
            worker.full = True
        self.add(task, front=True)

    def cannot_provide(self, link: str, task: Task, reason: str) -> None:
        """The worker cannot build or import this Main's environment: it gets no more tasks,
        and ``task`` waits for another worker (no attempt counted)."""
        worker = self.workers.get(link)
        if worker is not None and not worker.unable:
            worker.unable = reason
        self.add(task, front=True)

    def retry(self, task: Task, memory: int = 0) -> bool:
        """After a crash: requeue the task if it has tries left (True), else False. A task
        stopped for passing a ``memory`` limit is retried only where the limit is higher, and
        not at all if no connected worker has one."""
        task.attempts += 1
        if memory:
            task.memory = max(task.memory, memory)
            if not any(w.can_run(task.requirement, self.python, paused_too=True)
                       for w in self.workers.values()):
                return False
        if task.attempts > task.retries:
            return False
        self.add(task, front=True)
        return True

    def withdraw(self, task_id: int) -> tuple[Task | None, str | None]:
        """Cancel: remove a pending task (returned), or name the worker it is in flight on."""
        for queue in self.pending.values():
            for task in queue:
                if task.task_id == task_id:
                    queue.remove(task)
                    return task, None
        for worker in self.workers.values():
            if task_id in worker.inflight:
                return None, worker.link
        return None, None

    def take_pending(self) -> list[Task]:
        """Remove and return every task not yet sent to a worker."""
        tasks = [t for q in self.pending.values() for t in q]
        self.pending.clear()
        return tasks

    def unmatched(self) -> Iterator[Requirement]:
        """Requirements of pending tasks that no connected worker can meet."""
        for req, queue in self.pending.items():
            if queue and not any(w.can_run(req, self.python, paused_too=True)
                                 for w in self.workers.values()):
                yield req

    def all_tasks(self) -> list[Task]:
        tasks = [t for q in self.pending.values() for t in q]
        for w in self.workers.values():
            tasks.extend(w.inflight.values())
        return tasks

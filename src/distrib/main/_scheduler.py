"""The Main's scheduler, pure: which task goes to which worker, retries, and what is owed.

No sockets and no clock. The session feeds it tasks and worker events and sends what
``assign`` returns. Each worker's queue is kept filled a little beyond its slots (to hide
the network's latency) and no further, so a million pending calls stay here, not on the wire.

Placing a task costs O(log workers): the workers able to take a requirement's tasks sit in a
heap ranked by free slots, then room in their queue (``_ranks``, ``Scheduler.touch``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from msgspec.structs import force_setattr

from distrib.main._ranks import Ranks, Requirement
from distrib.main._tracked import SlotFigures, Task, WorkerView, ahead


class Scheduler:
    """Placement of pending tasks on workers, with a bounded per-worker queue; the workers
    able to take each requirement's tasks are ranked in heaps (``_ranks.Ranks``)."""

    def __init__(self, python: str, extra_depth: int = 16) -> None:
        self.python = python
        self.extra_depth = extra_depth
        self.pending: dict[Requirement, deque[Task]] = {}
        self.workers: dict[str, WorkerView] = {}
        self.slot_figures = SlotFigures()  # (replaced, never changed: see SlotFigures)
        # Tasks running in two copies (``start_copy``): task id -> the workers of its copies.
        self.copies: dict[int, set[str]] = {}
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
            if self.copy_ended(link, task):
                continue  # its other copy still runs
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
                force_setattr(worker, "rate", rate)
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

    def ran(self, link: str, seconds: float) -> None:
        """A task ran ``seconds`` on that worker (its ``task_seconds``, smoothed)."""
        worker = self.workers.get(link)
        if worker is not None:
            worker.task_seconds = (0.7 * worker.task_seconds + 0.3 * seconds
                                   if worker.task_seconds else seconds)

    def revoke(self, link: str, task_ids: list[int]) -> None:
        """These tasks of the worker are asked back: they stay in flight there (and are not
        asked back again) until it answers (``take_back``)."""
        worker = self.workers.get(link)
        if worker is not None:
            worker.revoking.update(i for i in task_ids if i in worker.inflight)

    def take_back(self, link: str, given: list[int], kept: list[int]) -> list[Task]:
        """The worker answered: ``given`` left its queue (returned, no longer in flight; no
        attempt counted), ``kept`` started there and stays. Ids not asked back, or asked of
        an earlier connection of that worker, are ignored."""
        worker = self.workers.get(link)
        if worker is None:
            return []
        out: list[Task] = []
        for task_id in given:
            if task_id in worker.revoking and task_id in self.copies:
                # (copied while it was asked back: its copy elsewhere goes on alone)
                task = worker.inflight.get(task_id)
                if task is not None:
                    self.copy_ended(link, task)
                continue
            if task_id in worker.revoking and (task := worker.inflight.pop(task_id, None)):
                worker.inflight_slots -= task.threads
                worker.full = False
                task.link = None
                out.append(task)
        worker.revoking.difference_update(given)
        worker.revoking.difference_update(kept)
        return out

    def place(self, link: str, tasks: list[Task]) -> list[Task]:
        """Put tasks taken back on the worker ``link`` (a move's destination); return those
        it took. The others (it left, or cannot run them) wait here, first in line."""
        worker = self.workers.get(link)
        placed: list[Task] = []
        for task in tasks:
            if task.response is not None and not task.response._is_pending():
                continue  # cancelled while it was asked back
            if worker is None or not worker.can_run(task.requirement, self.python):
                self.add(task, front=True)
                continue
            task.link = link
            worker.inflight[task.task_id] = task
            worker.inflight_slots += task.threads
            placed.append(task)
        return placed

    def pending_for(self, worker: WorkerView) -> bool:
        """Whether a task waiting here could go to ``worker``."""
        return any(queue and worker.can_run(req, self.python)
                   for req, queue in self.pending.items())

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
            tasks.extend(t for t in w.inflight.values()
                         if t.task_id not in self.copies or t.link == w.link)
        return tasks

    # --- second copies of straggling tasks (``_speculation``) --------------------------------

    def has_idle_slots(self) -> bool:
        """Whether nothing is pending and some worker has a slot free."""
        if any(self.pending.values()):
            return False
        return any(w.slots - w.inflight_slots + w.lent > 0 and not w.paused and not w.unable
                   for w in self.workers.values())

    def running_speculative(self) -> Iterator[tuple[Task, float]]:
        """Tasks in flight that may get a second copy (marked so, and not copied yet), each
        with the time since when it waits on its worker: since it started there, as reckoned
        (``progressed``), or for one queued there, since the worker last reported outcomes
        (a worker that stopped holds up its queue too: one asked back too, as it may never
        answer), or since it was sent."""
        for worker in self.workers.values():
            for task in worker.inflight.values():
                if task.speculative and not task.copied:
                    yield task, task.started or max(task.sent, worker.progress)

    def progressed(self, link: str, now: float) -> None:
        """The worker reported outcomes, or was sent tasks, at ``now``: its first tasks, up to
        its slots, are reckoned to run since then if not before (a worker starts this Main's
        tasks in the order they came; an estimate: it does not say when each starts)."""
        worker = self.workers.get(link)
        if worker is None:
            return
        worker.progress = now
        room = worker.slots + worker.lent
        for task in worker.inflight.values():
            if room < task.threads:
                break
            room -= task.threads
            if not task.started:
                task.started = now

    def start_copy(self, task: Task) -> str | None:
        """Place a second copy of the running ``task`` on another worker with a free slot
        (the most idle); return that worker, or None if none can take it now."""
        if task.link is None or task.copied:
            return None
        threads = task.threads
        idle = [w for w in self.workers.values()
                if w.link != task.link and not w.full
                and w.slots - w.inflight_slots + w.lent >= threads
                and w.can_run(task.requirement, self.python)]
        if not idle:
            return None
        best = max(idle, key=lambda w: w.slots - w.inflight_slots + w.lent)
        best.inflight[task.task_id] = task
        best.inflight_slots += threads
        task.copied = True
        self.copies[task.task_id] = {task.link, best.link}
        return best.link

    def copy_ended(self, link: str, task: Task) -> bool:
        """The copy of ``task`` on ``link`` ended without deciding its outcome (a crash, a
        lost worker): forget it there. True if another copy still runs (then nothing else is
        to be done for this one)."""
        links = self.copies.get(task.task_id)
        if links is None or link not in links:
            return False
        links.discard(link)
        worker = self.workers.get(link)
        if worker is not None:
            self._forget(worker, task)
        if len(links) > 1:
            return True
        del self.copies[task.task_id]
        if not links:
            return False
        task.link = next(iter(links))
        return True

    def drop_copies(self, task_id: int, keep: str) -> list[str]:
        """``task_id``'s copy on ``keep`` decides it (it ended, or it is to be cancelled
        there): forget its other copies; return their workers (to be sent a ``Cancel``)."""
        links = self.copies.pop(task_id, None)
        if links is None:
            return []
        dropped = [link for link in links if link != keep]
        for link in dropped:
            worker = self.workers.get(link)
            task = worker.inflight.get(task_id) if worker is not None else None
            if worker is not None and task is not None:
                self._forget(worker, task)
        return dropped

    def _forget(self, worker: WorkerView, task: Task) -> None:
        if worker.inflight.pop(task.task_id, None) is None:
            return
        worker.inflight_slots -= task.threads
        if task.task_id in worker.parked:
            worker.parked.discard(task.task_id)
            worker.lent -= task.threads
        worker.full = False

"""Tasks that change workers once sent: queued ones asked back for a worker that would start
them sooner (the policy is ``_rebalance``'s), and second copies of straggling speculative
ones (``_speculation``'s). The I/O loop (``_loop``) calls in here; this sends through it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from distrib.main import _speculation
from distrib.main._link import Link
from distrib.main._links import Links
from distrib.main._nested import Nested
from distrib.main._outcomes import environment_problem
from distrib.main._rebalance import Moves, plan
from distrib.main._scheduler import Scheduler
from distrib.main._tracked import Task
from distrib.wire import _messages as m

log = logging.getLogger("distrib")


class Relocation:
    """Moves and copies of tasks in flight, for the I/O loop."""

    def __init__(self, scheduler: Scheduler, links: Links, nested: Nested,
                 send: Callable[[str, list[Task], float], None]) -> None:
        self.scheduler, self.links, self.nested, self.send = scheduler, links, nested, send
        self.moves = Moves()  # tasks asked back from a worker for another
        self.durations = _speculation.Durations()  # run times of speculative functions
        self.speculating = False  # a speculative task was submitted: progress is followed

    def rebalance(self) -> None:
        """Ask workers for queued tasks back, for workers that would start them sooner
        (``_rebalance``)."""
        self.moves.prune(self.scheduler)
        for move in plan(self.scheduler, self.moves.incoming()):
            self.scheduler.revoke(move.victim, move.task_ids)
            self.moves.add(move)
            self.links.links[move.victim].send(m.Revoke(move.task_ids))

    def on_revoked(self, link: Link, msg: m.Revoked) -> None:
        """Tasks given back go to the worker they were asked back for (or wait for any)."""
        given = self.scheduler.take_back(link.link_id, msg.given, msg.kept)
        for thief, tasks in self.moves.answered(link.link_id, given, msg.kept).items():
            self.send(thief, self.scheduler.place(thief, tasks), time.monotonic())
        if given:
            log.debug("worker %s gave back %d task(s) for workers that start them sooner; %d "
                      "had started", link.label, len(given), len(msg.kept))

    def one_outcome(self, link: Link, task: Task, spec: m.ResultSpec,
                    ran: float | None) -> bool:
        """A speculative task's outcome from ``link``, its run taking ``ran`` seconds (None:
        not a plausible number): measure its run; with a second copy running, the first
        decisive outcome is the task's (the other copy is cancelled) and any other ends that
        copy alone. False: nothing more to do for this report."""
        if spec.status is m.Outcome.OK and ran is not None:
            self.durations.add(task.name, ran)
        if task.task_id not in self.scheduler.copies:
            return True
        if not _speculation.decisive(spec.status, spec.status is m.Outcome.ERROR and bool(
                environment_problem(spec.info))):
            self.scheduler.copy_ended(link.link_id, task)
            log.info("the copy of %s#%d on worker %s ended (%s); its other copy goes on",
                     task.name, task.task_id, link.label, spec.status)
            return False
        for other in self.scheduler.drop_copies(task.task_id, keep=link.link_id):
            self.links.links[other].send(m.Cancel([task.task_id]))
            log.info("%s#%d: the copy on worker %s ended first; the copy on worker %s is "
                     "cancelled", task.name, task.task_id, link.label,
                     self.links.links[other].label)
        return True

    def speculate(self, now: float) -> None:
        """Once nothing is pending and a slot is idle, start second copies of straggling
        speculative tasks there (``_speculation``)."""
        if not self.scheduler.has_idle_slots():
            return
        running = {t.task_id: (t, since) for t, since in self.scheduler.running_speculative()
                   if t.task_id not in self.nested.parents}  # (their calls would run twice)
        if not running:
            return
        late = _speculation.stragglers(now, ((t.task_id, t.name, since)
                                             for t, since in running.values()), self.durations)
        for task_id in late:
            task, since = running[task_id]
            first = task.link
            link_id = self.scheduler.start_copy(task)
            if link_id is None or first is None:
                continue
            median = self.durations.median(task.name) or 0.0
            log.info("%s#%d has waited on worker %s for %.1f s (its runs take %.2f s): a second "
                     "copy starts on worker %s", task.name, task.task_id,
                     self.links.links[first].label, now - since, median,
                     self.links.links[link_id].label)
            self.send(link_id, [task], now)

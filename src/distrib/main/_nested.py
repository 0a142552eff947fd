"""Calls made from inside tasks, as the Main runs them (relayed: each came from the worker
running its parent, over the connection the Main already has).

A call is a task like the Main's own (same scheduling, retries, timeout), queued before new
top-level calls (depth first). Its outcome goes back to its parent's worker, pickled again, if
that parent still runs there in the same attempt; else it is dropped. A parent that ends
cancels its unfinished calls. Workers say which of this Main's tasks wait for their calls
while holding their slots (``Waiting``): when every slot of every worker is held that way for
``DEADLOCK_AFTER`` seconds, no call of theirs can ever start, and the calls fail with
``NestedDeadlock`` naming the chain (their parents see it where they wait).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

from msgspec import Struct

from distrib import _sealed, _serialize
from distrib._errors import NestedDeadlock
from distrib._sustained import Sustained
from distrib._response import Response
from distrib.main._scheduler import Scheduler
from distrib.main._tracked import Task, WorkerView
from distrib.wire import _messages as m

log = logging.getLogger("distrib")

DEADLOCK_AFTER = 2.0  # seconds every slot is held by waiting parents before calls fail


class NestedCall(Struct, eq=False):
    task: Task
    parent: Task
    number: int  # the parent's number for it
    link: str  # where the parent ran when it called, and in which attempt
    attempt: int
    parent_id: int  # the parent's id as that worker knows it


FOREIGN = m.WORKER_IDS  # a parent id from this on is a worker's own: a task another worker
# sent there directly, which this Main does not know (``worker._direct``)


class Nested:
    """The calls tasks made, by task id, and their parents'."""

    def __init__(self, scheduler: Scheduler, new_id: Callable[[], int],
                 send: Callable[[str, m.Message], None],
                 cancel: Callable[[int], None]) -> None:
        self.scheduler, self._new_id, self._send, self._cancel = scheduler, new_id, send, cancel
        self.children: dict[int, NestedCall] = {}  # by the call's task id
        self._of: dict[int, dict[int, NestedCall]] = {}  # parent task id -> its number -> call
        self.waiting: dict[str, list[int]] = {}  # per worker: tasks waiting with their slots
        self.stuck: dict[str, bool] = {}  # per worker: every slot held by waiting tasks
        self._deadlock = Sustained(DEADLOCK_AFTER)
        self._foreign: dict[tuple[str, int], Task] = {}  # (worker, its id) -> a stand-in
        # for a parent this Main does not know, while its calls are unfinished
        self._foreign_ids = itertools.count(-1, -1)  # (stand-ins' ids: no task has these)

    def on_call(self, link: str, msg: m.Call) -> Task | None:
        """A task running on ``link`` made a call: the task to schedule, or None if the
        parent does not run there any more."""
        view = self.scheduler.workers.get(link)
        parent = (view.inflight.get(msg.parent) if msg.parent < FOREIGN else
                  self._stand_in(link, msg)) if view is not None else None
        if parent is None or not parent.response._is_pending():
            return None  # (it ended or was cancelled: its executor is being stopped)
        task_id = self._new_id()
        response: Response[Any] = Response(task_id, msg.name, self._cancel)
        task = Task(task_id, msg.name, list(msg.frames), tuple(msg.platforms) or ("*",),
                    msg.threads, msg.retries, msg.timeout, response, tuple(msg.outputs),
                    depth=parent.depth + 1)
        child = self.children[task_id] = NestedCall(task, parent, msg.child, link,
                                                    parent.attempts, msg.parent)
        calls = self._of.get(parent.task_id)
        if calls is None:
            calls = self._of[parent.task_id] = {}
            parent.response.add_done_callback(lambda _: self._parent_ended(parent.task_id))
        calls[msg.child] = child
        response.add_done_callback(lambda _: self._ended(child, response))
        self.scheduler.add(task, front=True)
        return task

    def _stand_in(self, link: str, msg: m.Call) -> Task:
        """The parent of a call that a worker's own task made (one another worker sent it):
        its calls are cancelled when that worker says so, or is lost."""
        parent = self._foreign.get((link, msg.parent))
        if parent is None:
            name = msg.caller[:200] or "a task"
            parent = self._foreign[(link, msg.parent)] = Task(
                next(self._foreign_ids), name, [], ("*",), 1, 0, None,
                Response(0, name, None), link=link, depth=max(0, msg.depth - 1))
        return parent

    def worker_left(self, link: str, inflight: list[Task]) -> None:
        """The worker was lost or left: the calls of the tasks that were on it (``inflight``)
        and of its own tasks (stand-ins) stop, and what it said of waiting tasks is void."""
        self.parents_moved(inflight)
        for key in [k for k in self._foreign if k[0] == link]:
            self._foreign.pop(key).response.cancel()
        self.waiting.pop(link, None)
        self.stuck.pop(link, None)

    @property
    def parents(self) -> dict[int, dict[int, NestedCall]]:
        """Tasks that made calls, by id (``task_id in parents`` is cheap)."""
        return self._of

    def on_cancel(self, link: str, msg: m.CancelChild) -> None:
        """The parent cancelled its call."""
        parent = self._foreign.get((link, msg.parent)) if msg.parent >= FOREIGN else None
        child = self._of.get(parent.task_id if parent else msg.parent, {}).get(msg.child)
        if child is not None and child.link == link:
            child.task.response.cancel()

    def finished(self, link: str, task_id: int) -> None:
        """A task of ``link`` reported its outcome: it waits for nothing there any more."""
        waiting = self.waiting.get(link)
        if waiting and task_id in waiting:
            waiting.remove(task_id)

    def on_waiting(self, link: str, msg: m.Waiting) -> None:
        """The worker's tasks that wait for their calls: parked ones lend their slots (more
        tasks may go there), blocked ones hold them (``check_deadlock``)."""
        self.waiting[link] = list(msg.blocked)
        self.stuck[link] = msg.stuck
        view = self.scheduler.workers.get(link)
        if view is not None:
            view.parked = {tid for tid in msg.parked if tid in view.inflight}
            view.lent = sum(view.inflight[tid].threads for tid in view.parked)

    def parents_moved(self, tasks: list[Task]) -> None:
        """These tasks stopped running where they were (their worker was lost, or it handed
        them back): their calls are cancelled, their outcomes would reach no one."""
        for task in tasks:
            self._parent_ended(task.task_id)

    def _parent_ended(self, parent_id: int) -> None:
        for child in list(self._of.pop(parent_id, {}).values()):
            child.task.response.cancel()

    def _ended(self, child: NestedCall, response: Response[Any]) -> None:
        """A call's outcome: to its parent, if it still runs where it called from."""
        self.children.pop(child.task.task_id, None)
        calls = self._of.get(child.parent.task_id)
        if calls is not None and calls.get(child.number) is child:
            del calls[child.number]
        parent = child.parent
        if child.parent_id >= FOREIGN and not calls:  # (its last call: forget the stand-in)
            self._foreign.pop((child.link, child.parent_id), None)
            self._of.pop(parent.task_id, None)
        if (parent.link != child.link or parent.attempts != child.attempt
                or not parent.response._is_pending()):
            return
        exc = response.error(0)
        try:
            if exc is None:
                status, info = "ok", {}
                frames = _serialize.dumps(_serialize.out_of_band(response.result(0)))
            else:
                status, info, frames = "error", _sealed.error_info(exc), \
                    _sealed.dumps_error(exc)
        except Exception as why:  # (a result that does not pickle again)
            status, info, frames = "error", _sealed.error_info(why), \
                _sealed.dumps_error(why)
        self._send(child.link, m.ChildResult(child.parent_id, child.number, status, info,
                                             frames=tuple(frames)))

    def check_deadlock(self, now: float) -> None:
        """Fail the calls that can never start (see the module's docstring)."""
        views = [v for v in self.scheduler.workers.values() if v.slots > 0 and not v.unable]
        if not self._deadlock.check(bool(self.children) and bool(views) and all(
                self.stuck.get(v.link, False)
                or _held_waiting(v, self.waiting.get(v.link, ())) >= v.slots for v in views), now):
            return
        names = ", ".join(sorted(v.name for v in views))
        for child in list(self.children.values()):
            if not child.task.response._is_pending():
                continue
            error = NestedDeadlock.of(self._chain(child), f"worker(s) {names}")
            log.warning("%s", error)
            child.task.response._set_outcome(None, exc=error)
            self._cancel(child.task.task_id)  # (off the worker or queue it is on)

    def _chain(self, child: NestedCall) -> str:
        """``task leaf#9, called by node#4, called by root#1``."""
        parts = [f"task {child.task.name}#{child.task.task_id}"]
        at: NestedCall | None = child
        while at is not None and len(parts) < 50:
            parent = at.parent
            parts.append(f"called by {parent.name}" + (f"#{parent.task_id}"
                                                       if parent.task_id > 0 else ""))
            at = self.children.get(at.parent.task_id)
        return ", ".join(parts)


def _held_waiting(view: WorkerView, waiting: Any) -> int:
    """Slots of ``view`` held by this Main's tasks that wait for their calls there."""
    return sum(task.threads for tid in waiting if (task := view.inflight.get(tid)) is not None)



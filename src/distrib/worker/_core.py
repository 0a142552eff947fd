"""The worker's pure core: one entry point, ``Core.handle(event, now) -> list[Action]``.

No sockets, no processes, no clock (the time comes in as an argument). The daemon turns what
it hears into the events of ``_events`` and carries out the actions returned; what it shows
in its status (slots held, tasks waiting, counters) it reads from the queries of
``CoreState``, and nothing it must react to comes any other way than as an action.

A Main's task goes: ``TaskSubmitted`` (the checks: refused, deferred, or ``Admit``), then, once
the daemon asked for its distribution, environment and shared objects, ``TaskQueued``; a
``Turn`` starts what fits on free slots, and the executor's messages (ready, done, skipped,
called, parked, resumed) and its death move it on from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distrib.wire._messages import Outcome
from distrib.wire._record import ErrorRecord
from distrib.worker._events import (
    Action,
    Admit,
    CancelAsked,
    DistReady,
    DistReplaced,
    DistUnavailable,
    Drained,
    EnvDropped,
    EnvFailed,
    EnvReady,
    Event,
    ExecutorDied,
    ExecutorLeaving,
    ExecutorEnvError,
    ExecutorReady,
    GaveBack,
    HandBack,
    MainDropped,
    MainLeft,
    ObjectsArrived,
    ObjectsUnavailable,
    OwnerStateChanged,
    QuotaSet,
    Report,
    Resize,
    RevokeAsked,
    Rewaited,
    StuckChanged,
    StuckHandedBack,
    TaskCalled,
    TaskDeferred,
    TaskDone,
    TaskParked,
    TaskQueued,
    TaskResumed,
    TaskSkipped,
    TaskSubmitted,
    Tick,
    Turn,
    Vacating,
    Warm,
    Withdrawn,
)
from distrib.worker._corestate import STUCK_HAND_BACK, CoreState
from distrib.worker._invariants import check
from distrib.worker._state import QueuedTask


class Core(CoreState):
    """The worker's decisions: which task runs on which executor, and what its Mains hear."""

    def __init__(self, slots: int, idle_after: float = 300.0, max_queued: int = 256 << 20,
                 max_parked: int | None = None,
                 hand_back_after: float = STUCK_HAND_BACK, spread: int | None = None) -> None:
        super().__init__(slots, idle_after, max_queued, max_parked, hand_back_after, spread)
        handlers: dict[type, Callable[[Any, float], None]] = {
            TaskSubmitted: self._submitted, TaskQueued: self._queued,
            TaskDeferred: self._deferred, DistReady: self._dist_ready,
            DistUnavailable: self._dist_failed, DistReplaced: self._dist_replaced,
            EnvReady: self._env_ready, EnvFailed: self._env_failed,
            EnvDropped: self._env_dropped, ObjectsArrived: self._objects_arrived,
            ObjectsUnavailable: self._objects_failed, ExecutorReady: self._executor_ready,
            TaskDone: self._task_done, TaskSkipped: self._task_skipped,
            ExecutorEnvError: self._env_error, ExecutorDied: self._executor_died,
            ExecutorLeaving: self._executor_leaving,
            TaskCalled: self._called, TaskParked: self._park, TaskResumed: self._resume,
            CancelAsked: self._cancel, RevokeAsked: self._revoke,
            HandBack: self._hand_back_event, Resize: self._resize,
            QuotaSet: self._set_quota, OwnerStateChanged: self._owner, MainLeft: self._main_left,
            Warm: self._warm_event, Turn: self._turn, Tick: self._tick}
        self._handlers = handlers

    def handle(self, event: Event, now: float) -> list[Action]:
        """Take one event; return what the daemon must do, in order."""
        self._handlers[type(event)](event, now)
        return self._take()

    # --- tasks from Mains --------------------------------------------------------------------

    def _refusal(self, task: QueuedTask) -> Report | None:
        """Why ``task`` cannot be queued here now (its report), or None: the one place that
        says so, before anything is fetched for it and again as it is queued."""
        if self.offered(task.peer) < task.threads <= self.most:
            self.counters["deferred"] += 1
            return Report(task, Outcome.DEFERRED)  # (its Main's view is stale)
        if task.threads > self.capacity:
            return Report(task, Outcome.ERROR, ErrorRecord(
                "distrib.ConfigError", f"task needs {task.threads} threads; this worker offers "
                f"{self.capacity}").to_wire())
        failed = self._import_failed.get((task.dist, task.context, task.peer))
        if failed is not None:
            return Report(task, Outcome.ENV_ERROR, *failed)
        if self.paused:
            self.counters["deferred"] += 1
            return Report(task, Outcome.DEFERRED)  # its Main sends it again later
        # (the bytes queued count per account: all Mains of one key together)
        account = self.accounts.get(task.peer)
        if account is None:  # (a Main alone in its account: the common case, kept cheap)
            count, nbytes = self.queues.count(task.peer), self.queues.queued_bytes(task.peer)
        else:
            count, nbytes = self.queued_of(account)
        if count and nbytes + task.nbytes > self.max_queued:
            self.counters["deferred"] += 1
            return Report(task, Outcome.DEFERRED)
        return None

    def _submitted(self, event: TaskSubmitted, now: float) -> None:
        task = event.task
        if event.problem:  # (the Welcome said so; a Main that sends anyway hears it)
            self._out.append(Report(task, Outcome.ENV_ERROR, ErrorRecord(
                "distrib.DependencyError", event.problem).to_wire()))
            return
        refused = self._refusal(task)
        self._out.append(Admit(task) if refused is None else refused)

    def _queued(self, event: TaskQueued, now: float) -> None:
        """It waits until its environment is ready and slots are free."""
        refused = None if event.admitted else self._refusal(event.task)
        if refused is None:
            self.queues.add(event.task)
        else:
            self._out.append(refused)

    def _deferred(self, event: TaskDeferred, now: float) -> None:
        self.counters["deferred"] += 1
        self._out.append(Report(event.task, Outcome.DEFERRED))

    def _cancel(self, event: CancelAsked, now: float) -> None:
        """Withdraw a queued task, or stop (or skip) one handed to an executor."""
        task = self.queues.remove(event.peer, event.task_id)
        if task is not None:
            self._out.append(Report(task, Outcome.CANCELLED))
            return
        for ex in list(self.executors.values()):
            for i, run in enumerate(ex.runs):
                if run.task.peer == event.peer and run.task.task_id == event.task_id:
                    self._withdraw(ex, run, i == 0, Withdrawn.CANCELLED)
                    return

    def _revoke(self, event: RevokeAsked, now: float) -> None:
        """Its queued tasks leave the queue; the others stay and run here (one handed to an
        executor counts as started: its executor may be starting it now)."""
        given: list[int] = []
        kept: list[int] = []
        for task_id in event.task_ids:
            taken = self.queues.remove(event.peer, task_id)
            (kept if taken is None else given).append(task_id)
        self._out.append(GaveBack(event.peer, given, kept))

    def _main_left(self, event: MainLeft, now: float) -> None:
        """Forget its tasks; ``MainDropped`` says how many were queued and running."""
        peer = event.peer
        queued = len(self.queues.drop_peer(peer))
        self._leave_account(peer)
        self._callers.pop(peer, None)
        for key in [k for k in self._import_failed if k[2] == peer]:
            del self._import_failed[key]
        running = 0
        for ex in list(self.executors.values()):
            for i, run in reversed(list(enumerate(ex.runs))):
                if run.task.peer == peer and ex.ex_id in self.executors:
                    self._withdraw(ex, run, i == 0, Withdrawn.DROPPED)
                    running += i == 0
                    queued += i > 0  # (handed to an executor, not started)
        self._out.append(MainDropped(peer, queued, running))
        if event.private:  # (its idle ones: those that ran its tasks were stopped above)
            for ex in [e for e in self.executors.values() if e.key.context == event.private]:
                self._retire(ex)

    def _set_quota(self, event: QuotaSet, now: float) -> None:
        """The quota of ``peer``'s account (which it joins, if new to it). A lower limit asks
        the account's tasks not started back (its running ones finish), and its tasks that
        need more threads than the limit go back to their Mains."""
        peer, limit = event.peer, event.limit
        account = event.account or peer
        if self.account(peer) != account:
            self._leave_account(peer)
        if account != peer:
            self.accounts[peer] = account
        self.members.setdefault(account, set()).add(peer)
        lower = limit is not None and limit < self.offered(peer)
        if limit is None:
            self.limits.pop(account, None)
        else:
            self.limits[account] = limit
        self.weights[account] = event.weight
        self.quota_since[account] = self._next_run_id
        if lower:
            for member in sorted(self.members[account]):
                self._shrink(member)

    def _leave_account(self, peer: bytes) -> None:
        """``peer`` leaves its account; the account's quota goes with its last Main."""
        account = self.accounts.pop(peer, peer)
        members = self.members.get(account)
        if members is not None:
            members.discard(peer)
        if not members:
            self.members.pop(account, None)
            self.limits.pop(account, None)
            self.weights.pop(account, None)
            self.quota_since.pop(account, None)

    def _warm_event(self, event: Warm, now: float) -> None:
        """Idle executors ahead of a Main's calls: the ``Spawn`` actions are the new ones."""
        if not self.paused:
            self._warm(event.key, event.peer, now, event.count, event.used)

    # --- distributions, environments, shared objects -----------------------------------------

    def _dist_ready(self, event: DistReady, now: float) -> None:
        self._ready_dists.add(event.dist)

    def _dist_failed(self, event: DistUnavailable, now: float) -> None:
        """That Main's queued tasks of it fail; other Mains' wait for their own attempt."""
        for task in self.queues.take_where(
                lambda t: t.dist == event.dist and event.peer in (t.peer, t.reply)):
            self._out.append(Report(task, Outcome.ENV_ERROR, event.info))

    def _dist_replaced(self, event: DistReplaced, now: float) -> None:
        """Its executors are stopped (what they ran used a tree that was not the one shipped)
        and their tasks wait for the new tree."""
        self._ready_dists.discard(event.dist)
        for ex in list(self.executors.values()):
            if ex.key.dist == event.dist:
                self._halt(ex.ex_id, lambda run, head: None)

    def _env_ready(self, event: EnvReady, now: float) -> None:
        self._ready_envs.add(event.env)

    def _env_dropped(self, event: EnvDropped, now: float) -> None:
        self._ready_envs.discard(event.env)

    def _env_failed(self, event: EnvFailed, now: float) -> None:
        """Every task waiting for it fails (a later task of a new Main tries the build
        again)."""
        for task in self.queues.take_where(
                lambda t: t.env == event.env and event.peer in (None, t.peer)):
            self._out.append(Report(task, Outcome.ENV_ERROR, event.info))

    def _objects_arrived(self, event: ObjectsArrived, now: float) -> None:
        for task in self.queues.tasks():
            if task.peer == event.peer and task.waits:
                task.waits -= event.names

    def _objects_failed(self, event: ObjectsUnavailable, now: float) -> None:
        for task in self.queues.take_where(
                lambda t: t.peer == event.peer and bool(t.waits & event.names)):
            self._out.append(Report(task, Outcome.ERROR, event.info))

    # --- executors ---------------------------------------------------------------------------

    def _executor_ready(self, event: ExecutorReady, now: float) -> None:
        """What it was handed goes out at the next turn (its first task's run time counts from
        now; its timeout, from when it was handed)."""
        ex = self.executors[event.ex_id]
        ex.ready = True
        if ex.runs:
            ex.runs[0].started = now
        self._unsent.setdefault(event.ex_id, []).extend(ex.runs)

    def _task_done(self, event: TaskDone, now: float) -> None:
        ex = self.executors[event.ex_id]
        head = ex.runs[0] if ex.runs else None
        if head is None or head.run_id != event.run_id:
            self._executor_died(ExecutorDied(event.ex_id, ErrorRecord(
                "distrib.WorkerCrashed", f"executor sent an outcome for task {event.run_id}, "
                "which it was not running").to_wire()), now)
            return
        ex.runs.popleft()
        seconds = _ran(event.info.get("ran"), now - head.started)
        self._run_time[ex.key] = 0.8 * self._run_time.get(ex.key, seconds) + 0.2 * seconds
        self._next_head(ex, now)
        self.counters["tasks_done"] += 1
        if head.withdrawn in (None, Withdrawn.REQUEUED, Withdrawn.HANDED_BACK):  # (it ran)
            info = {**event.info, "ran": f"{seconds:.6f}"}  # (its Main's dashboard shows it)
            self._out.append(Report(head.task, event.outcome, info, event.frames, event.shm))
        elif head.withdrawn is Withdrawn.CANCELLED:  # finished before the skip could stop it
            self._out.append(Report(head.task, Outcome.CANCELLED, shm=event.shm))

    def _task_skipped(self, event: TaskSkipped, now: float) -> None:
        ex = self.executors[event.ex_id]
        run = next((r for r in ex.runs if r.run_id == event.run_id), None)
        if run is not None:
            was_head = run is ex.runs[0]
            ex.runs.remove(run)
            self._settle(run.task, run.withdrawn)
            if was_head:
                self._next_head(ex, now)

    def _env_error(self, event: ExecutorEnvError, now: float) -> None:
        """The main script raised as it imported, with its Main's argv and variables: the
        tasks of that environment and context fail, and later ones of the same Mains fail at
        once; other Mains' runs start over."""
        info, frames = event.info, event.frames
        ex = self.executors[event.ex_id]
        key = ex.key
        queued = self.queues.take_where(
            lambda t: t.dist == key.dist and t.context == key.context)
        for peer in {t.peer for t in queued} | {r.task.peer for r in ex.runs}:
            self._import_failed[(key.dist, key.context, peer)] = (info, frames)
        for task in queued:
            self._out.append(Report(task, Outcome.ENV_ERROR, info, frames))
        self._halt(event.ex_id, lambda run, head: Outcome.ENV_ERROR, info, frames)

    def _executor_died(self, event: ExecutorDied, now: float) -> None:
        """Its running task crashed (or failed, as ``outcome`` says, with ``info``), the
        others run elsewhere."""
        ex = self.executors.get(event.ex_id)
        if ex is None:
            return
        if ex.runs:
            self.counters["executors_crashed"] += 1
        self._halt(event.ex_id, lambda run, head: event.outcome if head else None,
                   event.info)

    def _executor_leaving(self, event: ExecutorLeaving, now: float) -> None:
        """It is stopped; the tasks it was handed go back to their queues, to run elsewhere."""
        if event.ex_id in self.executors:
            self._halt(event.ex_id, lambda run, head: None)

    def _called(self, event: TaskCalled, now: float) -> None:
        """The tasks handed to run after it go back to the queue (it may wait for a call that
        is one of them), and none is handed to it while it runs."""
        ex = self.executors.get(event.ex_id)
        if ex is None or not ex.runs or ex.runs[0].run_id != event.run_id or ex.nests:
            return
        ex.nests = True
        task = ex.runs[0].task
        self._callers[task.peer] = max(self._callers.get(task.peer, -1), task.depth)
        for run in list(ex.runs)[1:]:
            if run.withdrawn is None:
                self._withdraw(ex, run, False, Withdrawn.REQUEUED)

    def _park(self, event: TaskParked, now: float) -> None:
        """Its slots go to other tasks, unless ``max_parked`` executors are parked already (it
        holds them then). Its Main hears it."""
        ex = self.executors.get(event.ex_id)
        if (ex is None or not ex.runs or ex.runs[0].run_id != event.run_id
                or ex.parked or ex.blocked):
            return
        ex.waiter = ex.runs[0].task.peer
        if self._parked() < self.max_parked:
            self._lend(ex, now)
            self._last_park = now
        else:
            ex.blocked = True
            self._last_park = max(self._last_park, 0.0)  # (_depth_floor looks from now on)
        self._out.append(Rewaited(ex.waiter))

    def _resume(self, event: TaskResumed, now: float) -> None:
        """It holds its slots again (at once, over the count for a moment if they were taken
        meanwhile). Its Main hears it, if it was parked or holding them."""
        ex = self.executors.get(event.ex_id)
        if (ex is None or not ex.runs or ex.runs[0].run_id != event.run_id
                or not (ex.parked or ex.blocked)):
            return
        if ex.parked:
            ex.parked = False
            self.busy += ex.key.threads
            self._repark()
        ex.blocked = False
        self._out.append(Rewaited(ex.runs[0].task.peer))

    # --- the owner, the clock ----------------------------------------------------------------

    def _owner(self, event: OwnerStateChanged, now: float) -> None:
        """Stopping to lend sends every task not started back to its Main (``vacate``: the
        running ones too)."""
        was = self.state
        self.state = event.state
        if was == "serving" and self.paused:
            running = sum(1 for ex in self.executors.values() if ex.runs)
            if event.vacate and running:
                self._out.append(Vacating(running))
            self._hand_back(event.vacate)

    def _hand_back_event(self, event: HandBack, now: float) -> None:
        self._hand_back(event.vacate)

    def _hand_back(self, vacate: bool) -> None:
        """Every queued task, and every task handed to an executor that has not started, goes
        back to its Main, deferred (it places it elsewhere); ``vacate``: running tasks too
        (they are stopped)."""
        self._defer_where(lambda t: True)
        self._recall(Withdrawn.HANDED_BACK)
        if vacate:
            for ex in list(self.executors.values()):
                if ex.runs:
                    self._halt(ex.ex_id, lambda run, head: run.withdrawn if run.withdrawn in (
                        Withdrawn.CANCELLED, Withdrawn.DROPPED) else (
                        Outcome.DEFERRED if head else None))

    def _resize(self, event: Resize, now: float) -> None:
        """With fewer slots, running tasks finish and no new ones start beyond the new number
        (tasks handed to executors that have not started go back to the queue; those needing
        more threads than there now are, to their Mains)."""
        grew = event.slots > self.capacity
        self.capacity = event.slots
        self.most = max(self.most, event.slots)
        if not grew:
            self._shrink()

    def _turn(self, event: Turn, now: float) -> None:
        """Start what fits; say when every slot came to be held by waiting tasks (or no longer
        is), and when a draining worker has nothing running any more."""
        self._schedule(now)
        if self.stuck() != self._stuck:
            self._stuck = not self._stuck
            self._out.append(StuckChanged(self._stuck))
        if self.state == "draining" and not self._drained and not self.running_any():
            self._drained = True
            self._out.append(Drained())

    def _tick(self, event: Tick, now: float) -> None:
        """Stop tasks past their timeout, withdrawn ones that started before their skip, and
        executors idle for ``idle_after`` seconds (their memory goes back to the owner). When
        every slot has stayed held by waiting tasks, the queued tasks go back to their Mains
        (another worker may run them; if none can, the Main says NestedDeadlock)."""
        for ex in list(self.executors.values()):
            head = ex.runs[0] if ex.runs else None
            if head is None:
                if ex.idle_since is not None and now - ex.idle_since > self.idle_after:
                    self._retire(ex)
                continue
            if head.stop_at is not None and now > head.stop_at:
                why = head.withdrawn
                self._halt(ex.ex_id, lambda run, is_head: why if is_head else None)
            elif head.deadline is not None and now > head.deadline:
                self._halt(ex.ex_id, lambda run, is_head: Outcome.TIMEOUT if is_head else None)
        if self._stuck_for.check(self._stuck and self.waiting() > 0, now):
            self._out.append(StuckHandedBack(self.waiting()))
            self._hand_back(False)

    # --- invariants --------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Raise AssertionError if the core's state contradicts itself (tests call it after
        every event)."""
        check(self)


def _ran(said: str | None, seen: float) -> float:
    """How long a task ran: as its executor measured it (outcomes sent in a batch arrive at
    once), or from when it was seen to start when the executor said nothing usable."""
    try:
        ran = float(said) if said is not None else seen
    except ValueError:
        return seen
    return ran if 0.0 <= ran < float("inf") else seen

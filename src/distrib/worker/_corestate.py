"""Where tasks go: the worker core's state, its fair choice of what starts on free slots, and
the bookkeeping of executors (what each holds, parking, withdrawals, stopping one).

Pure: no sockets, no processes, no clock (the time comes in as an argument). ``Core`` (in
``_core``) turns events into calls of these methods; they append actions to ``_out``.

Every busy executor holds its next task (tiny tasks: a few), so a slot does not idle between
two tasks waiting for a turn of the daemon's loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container
from typing import Any, TypeAlias

from msgspec import Struct, field

from distrib._sustained import Sustained
from distrib.wire._messages import Outcome
from distrib.worker._events import (
    Action,
    EnvKey,
    Kill,
    OwnerWord,
    Report,
    Rewaited,
    Run,
    Send,
    Skip,
    Spawn,
    Withdrawn,
)
from distrib.worker._nesting import depth_floor, last_slot_depth, last_slot_rule
from distrib.worker._state import QueuedTask, Queues

TINY_TASK = 0.005  # seconds: executors of tasks this short get PREFETCH queued, others 1
PREFETCH = 4  # tasks waiting in an executor's pipe behind the running one
PREFETCH_BYTES = 16 * 1024  # only small calls: the pipe's buffer must hold them all
# Tasks under half a millisecond: more queued, so that their outcomes come back in batches
# (``executor._outgoing``) and the loop turns once per batch, not per task; beyond PREFETCH,
# smaller calls only, so that the pipe's buffer still holds them all.
TINIEST_TASK = 0.0005
PREFETCH_DEEP = 16
PREFETCH_DEEP_BYTES = 4 * 1024
SKIP_GRACE = 0.05  # seconds to wait for a "skipped" before stopping a withdrawn task
STUCK_HAND_BACK = 1.0  # seconds every slot is held by waiting tasks before queued ones go back


class ExecutorRecord(Struct, eq=False):
    """The core's record of one executor process: its runs in order (the first one runs)."""

    ex_id: int
    key: EnvKey
    ready: bool = False  # it has imported its environment
    runs: deque[Run] = field(default_factory=deque)
    idle_since: float | None = None  # when it last ran out of tasks
    nests: bool = False  # its running task called @distributed functions: nothing is queued
    # behind it (a call it waits for could be)
    parked: bool = False  # its running task waits for its calls and gave its slots back
    parked_at: float = 0.0
    waiter: bytes = b""  # the Main of the task that parked or blocked it
    blocked: bool = False  # it waits for them, holding its slots (parked executors at the cap)


_NONE: list[Action] = []  # returned for "nothing to do"; never changed
# What becomes of a task of a stopped executor: an outcome, a withdrawal, or None (requeued).
_Fate: TypeAlias = Outcome | Withdrawn | None


class CoreState:
    """``slots`` slots shared by the executors of every environment this worker serves."""

    def __init__(self, slots: int, idle_after: float = 300.0,
                 max_queued: int = 256 << 20, max_parked: int | None = None,
                 hand_back_after: float = STUCK_HAND_BACK, spread: int | None = None) -> None:
        self.capacity = slots  # slots offered now
        # executors whose task waits for its calls and gave its slots back, at most
        self.max_parked = 2 * slots if max_parked is None else max_parked
        self._last_park = float("-inf")
        # per Main, the deepest depth of a task of it that called @distributed functions
        self._callers: dict[bytes, int] = {}
        self.max_queued = max_queued  # payload bytes queued per Main; more is deferred
        self.idle_after = idle_after  # seconds an executor may wait for a task before it stops
        self.busy = 0  # slots held by executors that have a task
        self.queues = Queues(spread)  # (``spread``: a seed, see ``Queues``)
        self.executors: dict[int, ExecutorRecord] = {}
        self.counters = dict.fromkeys(
            ("tasks_done", "executors_started", "executors_crashed", "deferred", "parks",
             "most_parked"), 0)
        self._ready_dists: set[str] = set()
        self._ready_envs: set[str] = set()  # Python environments built since tasks waited
        # (dist, context, Main) whose environment failed to import: its later tasks fail at once
        self._import_failed: dict[tuple[str, str, bytes], tuple[dict[str, str], list[Any]]] = {}
        self._run_time: dict[EnvKey, float] = {}  # recent run time per environment (EWMA)
        self._unsent: dict[int, list[Run]] = {}  # handed out this turn, sent by _schedule()
        self._next_run_id = 0
        self._next_ex = 0
        self._out: list[Action] = []
        self.state: OwnerWord = "serving"  # as the Mains are told: not serving, start nothing
        self._stuck = False  # every slot held by a task waiting for its calls, as last said
        self._stuck_for = Sustained(hand_back_after)  # stuck, with tasks waiting
        self._drained = False  # Drained was said
        self.most = slots  # the most slots offered since the start (Mains may not know less)
        # Quotas, fair share and queued bytes count per account: a public key's Mains all
        # together (``QuotaSet.account``); a Main without a key is an account of its own.
        self.accounts: dict[bytes, bytes] = {}  # a Main -> its account, where not itself
        self.members: dict[bytes, set[bytes]] = {}  # an account -> its Mains
        self.limits: dict[bytes, int] = {}  # the most slots an account may hold (its quota)
        self.weights: dict[bytes, float] = {}  # an account's priority among those wanting more
        # per account, the last run id handed out when its quota was set: its runs since then
        # started within that quota (the invariants check it)
        self.quota_since: dict[bytes, int] = {}
        # Mains that do not take what this worker sends (``worker/_backlog.py``): none of
        # their tasks start until they do
        self.congested: Container[bytes] = frozenset()

    @property
    def paused(self) -> bool:
        """The owner paused or drains the worker, or it is away: start nothing new."""
        return self.state != "serving"

    # --- queries -----------------------------------------------------------------------------
    def running(self, ex_id: int) -> Run | None:
        """The task ``ex_id`` runs now, if any."""
        ex = self.executors.get(ex_id)
        return ex.runs[0] if ex is not None and ex.runs else None

    def active_dists(self) -> set[str]:
        """Distributions with a task queued or handed to an executor."""
        out = {run.task.dist for ex in self.executors.values() for run in ex.runs}
        return out | self.queues.dists()

    def held(self) -> dict[bytes, int]:
        """Slots each Main's running tasks hold."""
        out: dict[bytes, int] = {}
        for ex in self.executors.values():
            if ex.runs and not ex.parked:
                peer = ex.runs[0].task.peer
                out[peer] = out.get(peer, 0) + ex.key.threads
        return out

    def account(self, peer: bytes) -> bytes:
        """The account ``peer``'s quota, fair share and queued bytes count in."""
        return self.accounts.get(peer, peer)

    def held_by_account(self) -> dict[bytes, int]:
        """Slots each account's running tasks hold (all Mains of one key together)."""
        if not self.accounts:
            return self.held()  # (no keys: each Main is its own account)
        out: dict[bytes, int] = {}
        for peer, n in self.held().items():
            account = self.accounts.get(peer, peer)
            out[account] = out.get(account, 0) + n
        return out

    def queued_of(self, account: bytes) -> tuple[int, int]:
        """(tasks, payload bytes) queued here for the Mains of ``account``."""
        peers = self.members.get(account) or (account,)
        return (sum(self.queues.count(p) for p in peers),
                sum(self.queues.queued_bytes(p) for p in peers))

    def waiting_for_calls(self, peer: bytes) -> tuple[list[int], list[int], bool]:
        """``peer``'s tasks that wait for their calls: (parked ones, ones holding their
        slots, whether every slot is held by such a task of any Main)."""
        parked: list[int] = []
        blocked: list[int] = []
        for ex in self.executors.values():
            if ex.runs and ex.runs[0].task.peer == peer and (ex.parked or ex.blocked):
                (parked if ex.parked else blocked).append(ex.runs[0].task.task_id)
        return parked, blocked, self.stuck()

    def stuck(self) -> bool:
        """Every slot is held by a task waiting for its calls: nothing can start here."""
        return self.capacity > 0 and sum(
            ex.key.threads for ex in self.executors.values() if ex.blocked) >= self.capacity

    def waiting(self, peer: bytes | None = None) -> int:
        """Tasks not running yet: queued here, or handed to a busy executor to run next."""
        handed = sum(1 for ex in self.executors.values() for run in list(ex.runs)[1:]
                     if peer is None or run.task.peer == peer)
        return (len(self.queues) if peer is None else self.queues.count(peer)) + handed

    def offered(self, peer: bytes) -> int:
        """The slots the Main ``peer`` may use here: all of them, or its account's quota."""
        return min(self.capacity, self.limits.get(self.accounts.get(peer, peer), self.capacity))

    def running_any(self) -> bool:
        """Whether any executor holds a task (running, or handed to it to run next)."""
        return any(ex.runs for ex in self.executors.values())

    def env_is_ready(self, env: str) -> bool:
        return env in self._ready_envs

    def dist_is_ready(self, dist: str) -> bool:
        return dist in self._ready_dists

    def objects_in_use(self, peer: bytes) -> set[str]:
        """The shared objects that ``peer``'s queued and running tasks pass."""
        tasks = [t for t in self.queues.tasks() if t.peer == peer] + [
            run.task for ex in self.executors.values() for run in ex.runs
            if run.task.peer == peer]
        return {name for t in tasks for name in t.objects}

    def active_envs(self) -> set[str]:
        """Python environments with a task queued or handed to an executor."""
        return {t.env for t in self.queues.tasks()} | {
            run.task.env for ex in self.executors.values() for run in ex.runs}

    # --- what starts where --------------------------------------------------------------------

    def _schedule(self, now: float) -> None:
        """Start what fits on free slots, keep busy executors fed, and send what was handed."""
        if not len(self.queues) and not self._unsent:
            return
        held = self.held_by_account()
        new: dict[EnvKey, bytes] = {}  # environments with no executor before this turn
        runnable: Callable[[QueuedTask], bool] = self._runnable
        floor = self._depth_floor(now)
        if floor is not None:
            runnable = lambda t: t.depth > floor(t.peer) and self._runnable(t)  # noqa: E731
        deepest = None if floor is None else last_slot_depth(self.executors.values(),
                                                             self.max_parked)
        while self.busy < self.capacity and not self.paused:
            pick = runnable if deepest is None else last_slot_rule(
                runnable, self.capacity - self.busy, deepest)
            task = self.queues.next_runnable(self.capacity - self.busy, pick, held,
                                             self.limits, self.weights, self.accounts,
                                             self.congested)
            if task is None:
                break
            if deepest is not None:
                deepest = max(deepest, task.depth)
            account = self.accounts.get(task.peer, task.peer)
            held[account] = held.get(account, 0) + task.threads
            key = EnvKey(task.dist, task.threads, task.context)
            idle = (e for e in self.executors.values()
                    if e.key == key and not e.runs)
            ex = next(idle, None)
            if ex is None:
                if not any(e.key == key for e in self.executors.values()):
                    new[key] = task.peer
                ex = self._spawn(key)
            self.busy += task.threads
            self._hand(ex, task, now)
        for key, peer in new.items():
            self._warm(key, peer, now)
        if (self.busy == self.capacity and len(self.queues) and not self._starved(held)
                and not self.paused):  # (over the slots after a resize: let them drain)
            self._prefetch(now, held, floor)
        unsent, self._unsent = self._unsent, {}
        for ex_id, runs in unsent.items():
            holder = self.executors.get(ex_id)
            live = [r for r in runs if holder is not None and r in holder.runs]
            if live:
                self._out.append(Send(ex_id, live))

    def _depth_floor(self, now: float) -> Callable[[bytes], int] | None:
        """Per Main, only its tasks deeper than this may start now (see ``_nesting``)."""
        if self._last_park == float("-inf"):
            return None  # (no task here ever waited for its calls: the common case)
        return depth_floor(self.executors.values(), self.max_parked, now)

    def _take(self) -> list[Action]:
        if not self._out:
            return _NONE  # (most events decide nothing: no list to make)
        out, self._out = self._out, []
        return out

    def _runnable(self, task: QueuedTask) -> bool:
        return (task.dist in self._ready_dists and (not task.env or task.env in self._ready_envs)
                and not task.waits)

    def _starved(self, held: dict[bytes, int]) -> bool:
        """Whether an account (``held`` is per account) with work that could start holds
        less than its fair share: then no task is prefetched, so the next slot to free goes
        to it (max-min fair)."""
        if len(self.queues.peers()) < 2 and len(held) < 2:
            return False  # one Main: no one to be fair to
        accounts = {self.account(p) for p in self.queues.waiting_peers(self._runnable)
                    if p not in self.congested}
        waiting = [a for a in accounts
                   if held.get(a, 0) < self.limits.get(a, self.capacity)]  # (not at its quota)
        if not waiting:
            return False
        weights = {p: self.weights.get(p, 1.0) for p in set(waiting) | set(held)}
        total = sum(weights.values())
        return any(held.get(p, 0) < self.capacity * weights[p] / total for p in waiting)

    def _prefetch(self, now: float, held: dict[bytes, int],
                  floor: Callable[[bytes], int] | None) -> None:
        """All slots busy: give each busy executor its next task (tiny tasks: a few), so it
        starts it the moment it finishes one instead of waiting for a turn of the loop."""
        for ex in list(self.executors.values()):
            if not ex.runs or not ex.ready or ex.nests:
                continue
            key, peer = ex.key, ex.runs[-1].task.peer
            if peer in self.congested:
                continue
            account = self.accounts.get(peer, peer)
            if held.get(account, 0) > self.limits.get(account, self.capacity):
                continue  # over its quota since it was lowered: let its slots drain
            run_time = self._run_time.get(key, 1.0)
            depth = PREFETCH_DEEP if run_time <= TINIEST_TASK \
                else PREFETCH if run_time <= TINY_TASK else 1
            while len(ex.runs) <= depth:
                most = PREFETCH_BYTES if len(ex.runs) <= PREFETCH else PREFETCH_DEEP_BYTES
                # (the same Main's: then each account's slots held stay as they are, within
                # its quota)
                task = self.queues.next_runnable(key.threads, lambda t: (
                    t.peer == peer and t.dist == key.dist and t.threads == key.threads
                    and t.context == key.context and t.nbytes < most and not t.waits
                    # (a task that may call and wait would start behind another, unchecked)
                    and t.depth > max(self._callers.get(peer, -1),
                                      -1 if floor is None else floor(peer))))
                if task is None:
                    break
                self._hand(ex, task, now)

    def _spawn(self, key: EnvKey) -> ExecutorRecord:
        idle = [e for e in self.executors.values() if not e.runs]
        # Keep at most ``slots`` executors around: retire an idle one of another environment
        # (which: ``Queues.spare``; not one whose tasks wait for their turn here, up to a point)
        if (spare := self.queues.spare(idle, len(self.executors) - self.capacity)) is not None:
            self._retire(spare)
        self._next_ex += 1
        ex = self.executors[self._next_ex] = ExecutorRecord(self._next_ex, key)
        self.counters["executors_started"] += 1
        self._out.append(Spawn(ex.ex_id, key))
        return ex

    def _warm(self, key: EnvKey, peer: bytes, now: float, count: int | None = None,
              used: tuple[tuple[str, str], ...] | None = None) -> None:
        """An environment's first executors: start idle ones too, up to the slots its Main
        may use (and ``count``), on room no other executor holds (as a process pool starts
        its workers at the first call), so the next calls find them ready. Unused, they stop
        after ``idle_after``. With ``used``, idle executors of no Main connected make room."""
        most = self.offered(peer) // key.threads
        if count is not None:
            most = min(most, count)
        have = sum(1 for e in self.executors.values() if e.key == key)
        if used is not None:
            short = min(most - have, self.capacity) - (self.capacity - len(self.executors))
            for ex in [e for e in self.executors.values() if not e.runs and e.key != key
                       and (e.key.dist, e.key.context) not in used][:max(short, 0)]:
                self._retire(ex)
        for _ in range(min(most - have, self.capacity - len(self.executors))):
            self._spawn(key).idle_since = now

    def _retire(self, ex: ExecutorRecord) -> None:
        del self.executors[ex.ex_id]
        self._unsent.pop(ex.ex_id, None)
        self._out.append(Kill(ex.ex_id))

    def _hand(self, ex: ExecutorRecord, task: QueuedTask, now: float) -> None:
        self._next_run_id += 1
        run = Run(task, self._next_run_id)
        ex.runs.append(run)
        ex.idle_since = None
        if len(ex.runs) == 1:
            self._began(run, now)
        if ex.ready:
            self._unsent.setdefault(ex.ex_id, []).append(run)

    def _began(self, run: Run, now: float) -> None:
        run.started = now
        run.deadline = None if run.task.timeout is None else now + run.task.timeout

    # --- what executors hold --------------------------------------------------------------------

    def _release(self, ex: ExecutorRecord) -> None:
        """``ex``'s running task ended: its slots are free (a parked one's were already)."""
        if ex.parked or ex.blocked:
            self._out.append(Rewaited(ex.waiter))
        if ex.parked:
            ex.parked = False
            self._repark()
        else:
            self.busy -= ex.key.threads
        ex.nests = ex.blocked = False

    def _parked(self) -> int:
        return sum(e.parked for e in self.executors.values())

    def _lend(self, ex: ExecutorRecord, now: float) -> None:
        """``ex``'s running task waits for its calls: its slots go to other tasks."""
        ex.blocked, ex.parked, ex.parked_at = False, True, now
        self.busy -= ex.key.threads
        self.counters["parks"] += 1
        self.counters["most_parked"] = max(self.counters["most_parked"], self._parked())

    def _repark(self) -> None:
        """A parked task went on or ended: a task that waits holding its slots (at the cap)
        lends them now."""
        room = self.max_parked - self._parked()
        for ex in self.executors.values():
            if room <= 0:
                return
            if ex.blocked and ex.runs:
                self._lend(ex, ex.parked_at)  # (not a fresh park: no grace for its depth)
                self._out.append(Rewaited(ex.waiter))
                room -= 1

    def _next_head(self, ex: ExecutorRecord, now: float) -> None:
        """The executor's running task is gone: the next one (if any) starts running now."""
        self._release(ex)
        if not ex.runs:
            ex.idle_since = now
            return
        self.busy += ex.key.threads  # (the next task holds the slots)
        head = ex.runs[0]
        self._began(head, now)
        if head.withdrawn in (Withdrawn.CANCELLED, Withdrawn.DROPPED):
            # Its skip may be on its way back; if not, it started: stop it shortly.
            head.stop_at = now + SKIP_GRACE

    def _shrink(self, peer: bytes | None = None) -> None:
        """Fewer slots (for ``peer``, if given): tasks handed to executors and not started go
        back to the queue, and queued ones needing more slots than their Main may now use go
        back to it."""
        self._recall(Withdrawn.REQUEUED, peer)
        self._defer_where(lambda t: peer in (None, t.peer) and t.threads > self.offered(t.peer))

    def _defer_where(self, pred: Callable[[QueuedTask], bool]) -> None:
        """The queued tasks matching ``pred`` go back to their Mains, deferred."""
        for task in self.queues.take_where(pred):
            self._out.append(Report(task, Outcome.DEFERRED))

    def _recall(self, why: Withdrawn, peer: bytes | None = None) -> None:
        """Withdraw every task (of ``peer``, if given) handed to an executor that has not
        started (``why``: to the queue, or back to its Main)."""
        for ex in self.executors.values():
            for run in reversed(list(ex.runs)[1:]):  # (requeued in their order)
                if run.withdrawn is not None or peer not in (None, run.task.peer):
                    continue
                if ex.ready:
                    self._withdraw(ex, run, False, why)
                else:  # (not sent to it yet: no skip to wait for)
                    ex.runs.remove(run)
                    self._settle(run.task, why)

    def _settle(self, task: QueuedTask, why: Withdrawn | None) -> None:
        """A withdrawn task that did not run: report, requeue or forget it, as ``why`` says."""
        if why is Withdrawn.CANCELLED:
            self._out.append(Report(task, Outcome.CANCELLED))
        elif why is Withdrawn.HANDED_BACK:
            self._out.append(Report(task, Outcome.DEFERRED))
        elif why is Withdrawn.REQUEUED:
            self._requeue(task)

    def _requeue(self, task: QueuedTask) -> None:
        """Back to the head of its queue, or to its Main if it cannot start here soon: the
        worker stopped lending, or the task needs more slots than its Main may now use."""
        if self.paused or task.threads > self.offered(task.peer):
            self._out.append(Report(task, Outcome.DEFERRED))
        else:
            self.queues.add_front(task)

    def _withdraw(self, ex: ExecutorRecord, run: Run, running: bool, why: Withdrawn) -> None:
        """Cancel (or drop) a task handed to ``ex``: stop it if it runs, else ask to skip it."""
        if running:
            self._halt(ex.ex_id, lambda r, head: why if r is run else None)
            return
        run.withdrawn = why
        self._out.append(Skip(ex.ex_id, run.run_id))

    def _halt(self, ex_id: int, fate: Callable[[Run, bool], _Fate],
              info: dict[str, str] | None = None, frames: list[Any] | None = None) -> None:
        """Stop executor ``ex_id``. Each of its tasks gets ``fate(run, is_running)``: an
        outcome reported with ``info``/``frames`` (for a crash or an environment error) or
        without, a withdrawal, or None: back to the head of its queue, to run elsewhere."""
        ex = self.executors[ex_id]
        runs = list(ex.runs)
        ex.runs.clear()
        self._retire(ex)
        if runs:
            self._release(ex)
        for i, run in reversed(list(enumerate(runs))):
            end = fate(run, i == 0)
            if end is None:
                end = run.withdrawn  # asked to skip it: it does not go back to the queue
            if end is None:
                self._requeue(run.task)
            elif isinstance(end, Withdrawn):
                self._settle(run.task, end)
            elif isinstance(end, Outcome):
                keep = end in (Outcome.CRASHED, Outcome.ENV_ERROR, Outcome.ERROR)
                self._out.append(Report(run.task, end, (info or {}) if keep else {},
                                        (frames or []) if keep else []))

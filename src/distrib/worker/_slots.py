"""The worker's slots and executors, pure: events in, actions out.

No sockets, no processes, no clock (the time comes in as an argument). The daemon turns what
it hears (a submit, an executor's message, a death, a cancel, a tick) into calls of ``Slots``
and carries out the actions they return:

    Spawn(ex, key)         start executor ``ex`` for an environment and thread count
    Send(ex, runs)         hand it these tasks (it runs them in order)
    Skip(ex, key)          ask it to drop a task it holds and has not started
    Kill(ex)               stop it now
    Report(task, outcome)  send a task's outcome to its Main

Every busy executor holds its next task (tiny tasks: a few), so a slot does not idle between
two tasks waiting for a turn of the daemon's loop.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from distrib.wire._messages import Outcome
from distrib.wire._record import ErrorRecord
from distrib.worker._state import QueuedTask, Queues

TINY_TASK = 0.005  # seconds: executors of tasks this short get PREFETCH queued, others 1
PREFETCH = 4  # tasks waiting in an executor's pipe behind the running one
PREFETCH_BYTES = 16 * 1024  # only small calls: the pipe's buffer must hold them all
SKIP_GRACE = 0.05  # seconds to wait for a "skipped" before stopping a withdrawn task
PARK_GRACE = 0.05  # seconds a parked task's slots go only to deeper tasks (see _depth_floor)


@dataclass(frozen=True, slots=True)
class EnvKey:
    """Executors are shared by tasks of one distribution asking for the same thread count,
    from Mains with the same argv and forwarded environment (the main script's import sees
    them)."""

    dist: str
    threads: int
    context: str = ""


class Withdrawn(enum.Enum):
    """Why a task handed to an executor was taken back."""

    CANCELLED = "cancelled"  # its Main cancelled it: reported as Outcome.CANCELLED
    DROPPED = "dropped"  # its Main left: reported to no one
    REQUEUED = "requeued"  # fewer slots now: back to the queue (if it started, it runs on)
    HANDED_BACK = "handed back"  # the worker stops lending: back to its Main, deferred (if it
    # started, it runs on)


@dataclass(eq=False)
class Run:
    """A task handed to an executor; ``key`` names it on the executor's pipe."""

    task: QueuedTask
    key: int
    started: float = 0.0
    deadline: float | None = None
    withdrawn: Withdrawn | None = None
    stop_at: float | None = None  # withdrawn, but it became the running task: stop it then


@dataclass(eq=False)
class Executor:
    """An executor as the machine sees it: its tasks in order (the first one runs)."""

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


# --- actions ---------------------------------------------------------------------------------


@dataclass(slots=True)  # (not frozen: one is made per task, and frozen ones cost more)
class Spawn:
    ex_id: int
    key: EnvKey


@dataclass(slots=True)
class Send:
    ex_id: int
    runs: list[Run]


@dataclass(slots=True)
class Skip:
    ex_id: int
    key: int


@dataclass(slots=True)
class Kill:
    ex_id: int


@dataclass(slots=True)
class Report:
    task: QueuedTask
    outcome: Outcome
    info: dict[str, str] = field(default_factory=dict)
    frames: list[Any] = field(default_factory=list)
    shm: dict[str, int] | None = None  # result frames in /dev/shm


Action: TypeAlias = Spawn | Send | Skip | Kill | Report
_NONE: list[Action] = []  # returned for "nothing to do"; never changed
# What becomes of a task of a stopped executor: an outcome, a withdrawal, or None (requeued).
_Fate: TypeAlias = Outcome | Withdrawn | None


class Slots:
    """``slots`` slots shared by the executors of every environment this worker serves."""

    def __init__(self, slots: int, idle_after: float = 300.0,
                 max_queued: int = 256 << 20, max_parked: int | None = None) -> None:
        self.slots = slots
        # executors whose task waits for its calls and gave its slots back, at most
        self.max_parked = 2 * slots if max_parked is None else max_parked
        self._last_park = float("-inf")
        # per Main, the deepest depth of a task of it that called @distributed functions
        self._callers: dict[bytes, int] = {}
        self.rewaited: set[bytes] = set()  # Mains whose waiting tasks changed (Waiting to say)
        self.max_queued = max_queued  # payload bytes queued per Main; more is deferred
        self.idle_after = idle_after  # seconds an executor may wait for a task before it stops
        self.busy = 0  # slots held by executors that have a task
        self.queues = Queues()
        self.executors: dict[int, Executor] = {}
        self.counters = dict.fromkeys(
            ("tasks_done", "executors_started", "executors_crashed", "deferred", "parks",
             "most_parked"), 0)
        self._ready_dists: set[str] = set()
        self._ready_envs: set[str] = set()  # Python environments built since tasks waited
        # (dist, context, Main) whose environment failed to import: its later tasks fail at once
        self._import_failed: dict[tuple[str, str, bytes], tuple[dict[str, str], list[Any]]] = {}
        self._run_time: dict[EnvKey, float] = {}  # recent run time per environment (EWMA)
        self._unsent: dict[int, list[Run]] = {}  # handed out this turn, sent by schedule()
        self._next_key = 0
        self._next_ex = 0
        self._out: list[Action] = []
        self.paused = False  # the owner paused or drains the worker: start nothing new
        self.most = slots  # the most slots offered since the start (Mains may not know less)
        self.limits: dict[bytes, int] = {}  # the most slots a Main may hold (its quota)
        self.weights: dict[bytes, float] = {}  # a Main's priority among Mains that want more

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
        return self.slots > 0 and sum(
            ex.key.threads for ex in self.executors.values() if ex.blocked) >= self.slots

    def waiting(self, peer: bytes | None = None) -> int:
        """Tasks not running yet: queued here, or handed to a busy executor to run next."""
        handed = sum(1 for ex in self.executors.values() for run in list(ex.runs)[1:]
                     if peer is None or run.task.peer == peer)
        return (len(self.queues) if peer is None else self.queues.count(peer)) + handed

    # --- events ------------------------------------------------------------------------------

    def submit(self, task: QueuedTask) -> list[Action]:
        """A task arrived; it waits until its environment is ready and slots are free."""
        failed = self._import_failed.get((task.dist, task.context, task.peer))
        if self.offered(task.peer) < task.threads <= self.most:
            self._out.append(Report(task, Outcome.DEFERRED))  # (its Main's view is stale)
            self.counters["deferred"] += 1
        elif task.threads > self.slots:
            self._out.append(Report(task, Outcome.ERROR, ErrorRecord(
                "distrib.ConfigError", f"task needs {task.threads} threads; this worker offers "
                f"{self.slots}").to_wire()))
        elif failed is not None:
            self._out.append(Report(task, Outcome.ENV_ERROR, *failed))
        elif self.paused or (self.queues.count(task.peer) and self.queues.queued_bytes(
                task.peer) + task.nbytes > self.max_queued):
            self._out.append(Report(task, Outcome.DEFERRED))  # its Main sends it again later
            self.counters["deferred"] += 1
        else:
            self.queues.add(task)
        return self._take()

    def dist_ready(self, dist: str) -> None:
        """The environment of ``dist`` is built: its tasks may start."""
        self._ready_dists.add(dist)

    def env_ready(self, env: str) -> None:
        """The Python environment ``env`` is built: tasks waiting for it may start."""
        self._ready_envs.add(env)

    def env_is_ready(self, env: str) -> bool:
        return env in self._ready_envs

    def dist_is_ready(self, dist: str) -> bool:
        return dist in self._ready_dists

    def env_dropped(self, env: str) -> None:
        """The built environment ``env`` was removed (no task used it): build it again first."""
        self._ready_envs.discard(env)

    def env_failed(self, env: str, info: dict[str, str], peer: bytes | None = None
                   ) -> list[Action]:
        """Building the Python environment ``env`` failed (for ``peer`` alone, if given):
        every task waiting for it fails with ``info`` (a later task of a new Main tries the
        build again)."""
        for task in self.queues.take_where(
                lambda t: t.env == env and (peer is None or t.peer == peer)):
            self._out.append(Report(task, Outcome.ENV_ERROR, info))
        return self._take()

    def objects_in_use(self, peer: bytes) -> set[str]:
        """The shared objects that ``peer``'s queued and running tasks pass."""
        tasks = [t for t in self.queues.tasks() if t.peer == peer] + [
            run.task for ex in self.executors.values() for run in ex.runs
            if run.task.peer == peer]
        return {key for t in tasks for key in t.objects}

    def objects_arrived(self, peer: bytes, keys: set[str]) -> None:
        """Shared objects of ``peer`` are here: tasks waiting for them may start."""
        for task in self.queues.tasks():
            if task.peer == peer and task.waits:
                task.waits -= keys

    def objects_failed(self, peer: bytes, keys: set[str], info: dict[str, str]
                       ) -> list[Action]:
        """``peer`` cannot send shared objects: its tasks waiting for them fail with ``info``."""
        for task in self.queues.take_where(lambda t: t.peer == peer and bool(t.waits & keys)):
            self._out.append(Report(task, Outcome.ERROR, info))
        return self._take()

    def active_envs(self) -> set[str]:
        """Python environments with a task queued or handed to an executor."""
        return {t.env for t in self.queues.tasks()} | {
            run.task.env for ex in self.executors.values() for run in ex.runs}

    def dist_failed(self, dist: str, info: dict[str, str], peer: bytes | None) -> list[Action]:
        """Fetching or building ``dist`` from ``peer`` failed: that Main's queued tasks of it
        fail with ``info``; other Mains' wait for their own attempt."""
        for task in self.queues.take_where(
                lambda t: t.dist == dist and peer in (t.peer, t.reply)):  # (or its sender's)
            self._out.append(Report(task, Outcome.ENV_ERROR, info))
        return self._take()

    def env_replaced(self, dist: str) -> list[Action]:
        """The tree of ``dist`` drifted and is built again: its executors are stopped (what they
        ran used a tree that was not the one shipped) and their tasks wait for the new tree."""
        self._ready_dists.discard(dist)
        for ex in list(self.executors.values()):
            if ex.key.dist == dist:
                self._halt(ex.ex_id, lambda run, head: None)
        return self._take()

    def executor_ready(self, ex_id: int, now: float) -> None:
        """``ex_id`` imported its environment: what it was handed goes out now (its first
        task's run time counts from now; its timeout, from when it was handed)."""
        ex = self.executors[ex_id]
        ex.ready = True
        if ex.runs:
            ex.runs[0].started = now
        self._unsent.setdefault(ex_id, []).extend(ex.runs)

    def task_done(self, ex_id: int, key: int, outcome: Outcome, info: dict[str, str],
                  frames: list[Any], now: float, shm: dict[str, int] | None = None
                  ) -> list[Action]:
        """The executor finished its running task (``key``); ``shm``: its result frames in
        /dev/shm (reported with it, or on a withdrawn task's report, to be removed)."""
        ex = self.executors[ex_id]
        head = ex.runs[0] if ex.runs else None
        if head is None or head.key != key:
            return self.executor_died(ex_id, ErrorRecord(
                "distrib.WorkerCrashed", f"executor sent an outcome for task {key}, which it "
                "was not running").to_wire())
        ex.runs.popleft()
        seconds = now - head.started
        self._run_time[ex.key] = 0.8 * self._run_time.get(ex.key, seconds) + 0.2 * seconds
        self._next_head(ex, now)
        self.counters["tasks_done"] += 1
        if head.withdrawn in (None, Withdrawn.REQUEUED, Withdrawn.HANDED_BACK):  # (it ran)
            info = {**info, "ran": f"{seconds:.6f}"}  # (its Main's dashboard shows run times)
            self._out.append(Report(head.task, outcome, info, frames, shm))
        elif head.withdrawn is Withdrawn.CANCELLED:  # finished before the skip could stop it
            self._out.append(Report(head.task, Outcome.CANCELLED, shm=shm))
        return self._take()

    def task_skipped(self, ex_id: int, key: int, now: float) -> list[Action]:
        """The executor dropped a task it had not started, as asked."""
        ex = self.executors[ex_id]
        run = next((r for r in ex.runs if r.key == key), None)
        if run is not None:
            was_head = run is ex.runs[0]
            ex.runs.remove(run)
            self._settle(run.task, run.withdrawn)
            if was_head:
                self._next_head(ex, now)
        return self._take()

    def env_error(self, ex_id: int, info: dict[str, str], frames: list[Any]) -> list[Action]:
        """The executor could not import its environment (the main script raised, with its
        Main's argv and variables): the tasks of that environment and context fail, and later
        ones of the same Mains fail at once; other Mains' runs start over."""
        ex = self.executors[ex_id]
        key = ex.key
        queued = self.queues.take_where(
            lambda t: t.dist == key.dist and t.context == key.context)
        for peer in {t.peer for t in queued} | {r.task.peer for r in ex.runs}:
            self._import_failed[(key.dist, key.context, peer)] = (info, frames)
        for task in queued:
            self._out.append(Report(task, Outcome.ENV_ERROR, info, frames))
        self._halt(ex_id, lambda run, head: Outcome.ENV_ERROR, info, frames)
        return self._take()

    def executor_died(self, ex_id: int, info: dict[str, str]) -> list[Action]:
        """The executor is gone: its running task crashed (``info``), the others run elsewhere."""
        ex = self.executors.get(ex_id)
        if ex is None:
            return self._take()
        if ex.runs:
            self.counters["executors_crashed"] += 1
        self._halt(ex_id, lambda run, head: Outcome.CRASHED if head else None, info)
        return self._take()

    def nested(self, ex_id: int, key: int) -> list[Action]:
        """The running task ``key`` of ``ex_id`` called a ``@distributed`` function: the
        tasks handed to run after it go back to the queue (it may wait for a call that is one
        of them), and none is handed to it while it runs."""
        ex = self.executors.get(ex_id)
        if ex is None or not ex.runs or ex.runs[0].key != key or ex.nests:
            return _NONE
        ex.nests = True
        task = ex.runs[0].task
        self._callers[task.peer] = max(self._callers.get(task.peer, -1), task.depth)
        for run in list(ex.runs)[1:]:
            if run.withdrawn is None:
                self._withdraw(ex, run, False, Withdrawn.REQUEUED)
        return self._take()

    def park(self, ex_id: int, key: int, now: float) -> bool:
        """The running task ``key`` of ``ex_id`` waits for its calls: its slots go to other
        tasks, unless ``max_parked`` executors are parked already (it holds them then).
        Whether it was taken (its Main hears it)."""
        ex = self.executors.get(ex_id)
        if ex is None or not ex.runs or ex.runs[0].key != key or ex.parked or ex.blocked:
            return False
        ex.waiter = ex.runs[0].task.peer
        if self._parked() < self.max_parked:
            self._lend(ex, now)
            self._last_park = now
            return True
        ex.blocked = True
        self._last_park = max(self._last_park, 0.0)  # (_depth_floor looks from now on)
        return True

    def unpark(self, ex_id: int, key: int) -> bool:
        """The running task ``key`` of ``ex_id`` goes on: it holds its slots again (at once,
        over the count for a moment if they were taken meanwhile). Whether it was parked or
        holding them (its Main hears it)."""
        ex = self.executors.get(ex_id)
        if ex is None or not ex.runs or ex.runs[0].key != key or not (ex.parked or ex.blocked):
            return False
        if ex.parked:
            ex.parked = False
            self.busy += ex.key.threads
            self._repark()
        ex.blocked = False
        return True

    def cancel(self, peer: bytes, task_id: int, now: float) -> list[Action]:
        """Withdraw a queued task, or stop (or skip) one handed to an executor."""
        task = self.queues.remove(peer, task_id)
        if task is not None:
            self._out.append(Report(task, Outcome.CANCELLED))
            return self._take()
        for ex in list(self.executors.values()):
            for i, run in enumerate(ex.runs):
                if run.task.peer == peer and run.task.task_id == task_id:
                    self._withdraw(ex, run, i == 0, Withdrawn.CANCELLED)
                    return self._take()
        return self._take()

    def hand_back(self, vacate: bool = False) -> list[Action]:
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
        return self._take()

    def resize(self, slots: int) -> list[Action]:
        """The owner changed the number of slots. With fewer, running tasks finish and no new
        ones start beyond the new number (tasks handed to executors that have not started go
        back to the queue; those needing more threads than there now are, to their Mains)."""
        grew = slots > self.slots
        self.slots = slots
        self.most = max(self.most, slots)
        if not grew:
            self._shrink()
        return self._take()

    def set_quota(self, peer: bytes, limit: int | None, weight: float) -> list[Action]:
        """``peer`` may hold at most ``limit`` slots (None: any), and shares slots with other
        Mains that want more in proportion to ``weight``. A lower limit asks its tasks not
        started back (its running ones finish), and its tasks that need more threads than
        the limit go back to it."""
        lower = limit is not None and limit < self.offered(peer)
        if limit is None:
            self.limits.pop(peer, None)
        else:
            self.limits[peer] = limit
        self.weights[peer] = weight
        if lower:
            self._shrink(peer)
        return self._take()

    def offered(self, peer: bytes) -> int:
        """The slots ``peer`` may use here: all of them, or its quota."""
        return min(self.slots, self.limits.get(peer, self.slots))

    def running_any(self) -> bool:
        """Whether any executor holds a task (running, or handed to it to run next)."""
        return any(ex.runs for ex in self.executors.values())

    def drop_main(self, peer: bytes) -> tuple[list[Action], int, int]:
        """A Main left: forget its tasks. Returns the actions, and how many tasks were queued
        and how many running."""
        queued = len(self.queues.drop_peer(peer))
        self.limits.pop(peer, None)
        self._callers.pop(peer, None)
        self.weights.pop(peer, None)
        for key in [k for k in self._import_failed if k[2] == peer]:
            del self._import_failed[key]
        running = 0
        for ex in list(self.executors.values()):
            for i, run in reversed(list(enumerate(ex.runs))):
                if run.task.peer == peer and ex.ex_id in self.executors:
                    self._withdraw(ex, run, i == 0, Withdrawn.DROPPED)
                    running += i == 0
                    queued += i > 0  # (handed to an executor, not started)
        return self._take(), queued, running

    def tick(self, now: float) -> list[Action]:
        """Stop tasks past their timeout, withdrawn ones that started before their skip, and
        executors idle for ``idle_after`` seconds (their memory goes back to the owner)."""
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
        return self._take()

    def schedule(self, now: float) -> list[Action]:
        """Start what fits on free slots, keep busy executors fed, and send what was handed."""
        if not len(self.queues) and not self._unsent:
            return _NONE
        held = self.held()
        new: dict[EnvKey, bytes] = {}  # environments with no executor before this turn
        runnable: Callable[[QueuedTask], bool] = self._runnable
        floor = self._depth_floor(now)
        if floor is not None:
            runnable = lambda t: t.depth > floor(t.peer) and self._runnable(t)  # noqa: E731
        while self.busy < self.slots and not self.paused:
            task = self.queues.next_runnable(self.slots - self.busy, runnable, held,
                                             self.limits, self.weights)
            if task is None:
                break
            held[task.peer] = held.get(task.peer, 0) + task.threads
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
        if (self.busy == self.slots and len(self.queues) and not self._starved(held)
                and not self.paused):  # (over the slots after a resize: let them drain)
            self._prefetch(now, held, floor)
        unsent, self._unsent = self._unsent, {}
        for ex_id, runs in unsent.items():
            holder = self.executors.get(ex_id)
            live = [r for r in runs if holder is not None and r in holder.runs]
            if live:
                self._out.append(Send(ex_id, live))
        return self._take()

    # --- internals ---------------------------------------------------------------------------

    def _depth_floor(self, now: float) -> Callable[[bytes], int] | None:
        """Per Main, only its tasks deeper than this may start now (None: any, for all), so
        that tasks waiting for their calls never take every slot:

        - a task that parked in the last ``PARK_GRACE`` seconds lends its slots to deeper
          tasks of its Main (its own calls, relayed through its Main, arrive within that
          time), not to tasks of its depth (or shallower), which would call and wait in turn;
        - with ``max_parked`` executors parked, a task that called and waits would keep its
          slots: only tasks deeper than every waiting one start, of any Main (the deepest
          calls are the ones that do not call again), and shallower ones once a parked task
          is done."""
        if self._last_park == float("-inf"):
            return None  # (no task here ever waited for its calls: the common case)
        waiting = [ex for ex in self.executors.values() if ex.runs and (ex.parked or ex.blocked)]
        if not waiting:
            return None
        floors: dict[bytes, int] = {}
        for ex in waiting:
            if ex.parked and now - ex.parked_at < PARK_GRACE:
                peer, depth = ex.runs[0].task.peer, ex.runs[0].task.depth
                floors[peer] = max(floors.get(peer, -1), depth)
        cap = -1
        if sum(ex.parked for ex in waiting) >= self.max_parked:
            cap = max(ex.runs[0].task.depth for ex in waiting)
        if not floors and cap < 0:
            return None
        return lambda peer: max(floors.get(peer, -1), cap)

    def _take(self) -> list[Action]:
        if not self._out:
            return _NONE  # (most events decide nothing: no list to make)
        out, self._out = self._out, []
        return out

    def _runnable(self, task: QueuedTask) -> bool:
        return (task.dist in self._ready_dists and (not task.env or task.env in self._ready_envs)
                and not task.waits)

    def _starved(self, held: dict[bytes, int]) -> bool:
        """Whether a Main with work that could start holds less than its fair share: then no
        task is prefetched, so the next slot to free goes to it (max-min fair)."""
        if len(self.queues.peers()) < 2 and len(held) < 2:
            return False  # one Main: no one to be fair to
        waiting = [p for p in self.queues.waiting_peers(self._runnable)
                   if held.get(p, 0) < self.limits.get(p, self.slots)]  # (not at its quota)
        if not waiting:
            return False
        weights = {p: self.weights.get(p, 1.0) for p in set(waiting) | set(held)}
        total = sum(weights.values())
        return any(held.get(p, 0) < self.slots * weights[p] / total for p in waiting)

    def _prefetch(self, now: float, held: dict[bytes, int],
                  floor: Callable[[bytes], int] | None) -> None:
        """All slots busy: give each busy executor its next task (tiny tasks: a few), so it
        starts it the moment it finishes one instead of waiting for a turn of the loop."""
        for ex in list(self.executors.values()):
            if not ex.runs or not ex.ready or ex.nests:
                continue
            key, peer = ex.key, ex.runs[-1].task.peer
            if held.get(peer, 0) > self.limits.get(peer, self.slots):
                continue  # over its quota since it was lowered: let its slots drain
            depth = PREFETCH if self._run_time.get(key, 1.0) <= TINY_TASK else 1
            while len(ex.runs) <= depth:
                # (the same Main's: then each Main's slots held stay as they are, within quota)
                task = self.queues.next_runnable(key.threads, lambda t: (
                    t.peer == peer and t.dist == key.dist and t.threads == key.threads
                    and t.context == key.context and t.nbytes < PREFETCH_BYTES and not t.waits
                    # (a task that may call and wait would start behind another, unchecked)
                    and t.depth > max(self._callers.get(peer, -1),
                                      -1 if floor is None else floor(peer))))
                if task is None:
                    break
                self._hand(ex, task, now)

    def _spawn(self, key: EnvKey) -> Executor:
        idle = [e for e in self.executors.values() if not e.runs]
        # Keep at most ``slots`` executors around: retire an idle one of another environment.
        if len(self.executors) >= self.slots and idle:
            self._retire(idle[0])
        self._next_ex += 1
        ex = self.executors[self._next_ex] = Executor(self._next_ex, key)
        self.counters["executors_started"] += 1
        self._out.append(Spawn(ex.ex_id, key))
        return ex

    def warm(self, key: EnvKey, peer: bytes, count: int, now: float) -> list[Action]:
        """``peer`` said Hello asking for ``count`` executors ahead of its calls: start that
        many idle ones of ``key``, as ``_warm`` would. The new executors are the ``Spawn``
        actions returned."""
        if not self.paused:
            self._warm(key, peer, now, count)
        return self._take()

    def _warm(self, key: EnvKey, peer: bytes, now: float, count: int | None = None) -> None:
        """An environment's first executors: start idle ones too, up to the slots its Main
        may use (and ``count``), on room no other executor holds (as a process pool starts
        its workers at the first call), so the next calls find them ready. Unused, they stop
        after ``idle_after``."""
        most = self.offered(peer) // key.threads
        if count is not None:
            most = min(most, count)
        have = sum(1 for e in self.executors.values() if e.key == key)
        for _ in range(min(most - have, self.slots - len(self.executors))):
            self._spawn(key).idle_since = now

    def _retire(self, ex: Executor) -> None:
        del self.executors[ex.ex_id]
        self._unsent.pop(ex.ex_id, None)
        self._out.append(Kill(ex.ex_id))

    def _hand(self, ex: Executor, task: QueuedTask, now: float) -> None:
        self._next_key += 1
        run = Run(task, self._next_key)
        ex.runs.append(run)
        ex.idle_since = None
        if len(ex.runs) == 1:
            self._began(run, now)
        if ex.ready:
            self._unsent.setdefault(ex.ex_id, []).append(run)

    def _began(self, run: Run, now: float) -> None:
        run.started = now
        run.deadline = None if run.task.timeout is None else now + run.task.timeout

    def _release(self, ex: Executor) -> None:
        """``ex``'s running task ended: its slots are free (a parked one's were already)."""
        if ex.parked or ex.blocked:
            self.rewaited.add(ex.waiter)
        if ex.parked:
            ex.parked = False
            self._repark()
        else:
            self.busy -= ex.key.threads
        ex.nests = ex.blocked = False

    def _parked(self) -> int:
        return sum(e.parked for e in self.executors.values())

    def _lend(self, ex: Executor, now: float) -> None:
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
                self.rewaited.add(ex.waiter)
                room -= 1

    def _next_head(self, ex: Executor, now: float) -> None:
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

    def _withdraw(self, ex: Executor, run: Run, running: bool, why: Withdrawn) -> None:
        """Cancel (or drop) a task handed to ``ex``: stop it if it runs, else ask to skip it."""
        if running:
            self._halt(ex.ex_id, lambda r, head: why if r is run else None)
            return
        run.withdrawn = why
        self._out.append(Skip(ex.ex_id, run.key))

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
                keep = end in (Outcome.CRASHED, Outcome.ENV_ERROR)
                self._out.append(Report(run.task, end, (info or {}) if keep else {},
                                        (frames or []) if keep else []))

"""The worker core's vocabulary: the events the daemon feeds it and the actions it returns.

The daemon turns what it hears (a Main's Submit, an executor's message, a death, the owner's
word, the clock) into one of the events below and calls ``Core.handle(event, now)``; it carries
out the actions returned, in order:

    Admit(task)              a submitted task passed the core's checks: get what it needs
                             (shared objects, distribution, environment), then TaskQueued
    Spawn(ex, key)           start executor ``ex`` for an environment and thread count
    Send(ex, runs)           hand it these tasks (it runs them in order)
    Skip(ex, run_id)         ask it to drop a task it holds and has not started
    Kill(ex)                 stop it now
    Report(task, outcome)    send a task's outcome to its Main
    Rewaited(peer)           that Main's tasks waiting for their calls changed: tell it
    StuckChanged(stuck)      every slot is (no longer) held by a waiting task: tell every Main
    StuckHandedBack(count)   the queued tasks went back because every slot stayed held
    Vacating(running)        the worker stops lending and stops its running tasks
    MainDropped(peer, ...)   a Main's tasks were forgotten (how many, for the log)
    GaveBack(peer, ...)      which of the tasks a Main took back left the queue (the answer
                             to RevokeAsked, sent by the role that asked)
    Drained()                draining, and nothing runs any more: the worker leaves
"""

from __future__ import annotations

import enum
from typing import Any, Literal, TypeAlias

from msgspec import Struct, field

from distrib.wire._messages import Outcome
from distrib.worker._state import QueuedTask

OwnerWord: TypeAlias = Literal["serving", "paused", "draining"]


class EnvKey(Struct, frozen=True):
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


class Run(Struct, eq=False):
    """A task handed to an executor; ``run_id`` names it on the executor's pipe."""

    task: QueuedTask
    run_id: int
    started: float = 0.0
    deadline: float | None = None
    withdrawn: Withdrawn | None = None
    stop_at: float | None = None  # withdrawn, but it became the running task: stop it then


# --- events ----------------------------------------------------------------------------------


class TaskSubmitted(Struct, frozen=True):
    """A Main sent a task; nothing is fetched for it yet. ``problem``: why its Main's
    environment cannot be built here (its Welcome said so), "" if none."""

    task: QueuedTask
    problem: str = ""


class TaskQueued(Struct, frozen=True):
    """A task whose needs are asked for (after ``Admit``, or a call placed here): queue it."""

    task: QueuedTask
    admitted: bool = False  # the core's checks passed as it was submitted (``Admit``), just now


class TaskDeferred(Struct, frozen=True):
    """The daemon cannot take a task now (its shared objects do not fit): back to its Main."""

    task: QueuedTask


class DistReady(Struct, frozen=True):
    dist: str


class DistUnavailable(Struct, frozen=True):
    """Fetching or building ``dist`` from ``peer`` failed (its ``DistFailed``, a bad manifest
    or blob, a failed build)."""

    dist: str
    info: dict[str, str]
    peer: bytes | None


class DistReplaced(Struct, frozen=True):
    """The tree of ``dist`` drifted and is built again."""

    dist: str


class EnvReady(Struct, frozen=True):
    env: str


class EnvFailed(Struct, frozen=True):
    """Building the Python environment ``env`` failed (for ``peer`` alone, if given)."""

    env: str
    info: dict[str, str]
    peer: bytes | None = None


class EnvDropped(Struct, frozen=True):
    """The built environment ``env`` was removed: build it again before a task uses it."""

    env: str


class ObjectsArrived(Struct, frozen=True):
    peer: bytes
    names: frozenset[str]


class ObjectsUnavailable(Struct, frozen=True):
    """The shared objects ``names`` of ``peer`` cannot be had here (its Main cannot send them,
    or storing them failed)."""

    peer: bytes
    names: frozenset[str]
    info: dict[str, str]


class ExecutorReady(Struct, frozen=True):
    """The executor imported its environment."""

    ex_id: int


class TaskDone(Struct, frozen=True):
    """The executor finished its running task ``run_id``; ``shm``: its result frames in
    /dev/shm."""

    ex_id: int
    run_id: int
    outcome: Outcome
    info: dict[str, str]
    frames: list[Any]
    shm: dict[str, int] | None = None


class TaskSkipped(Struct, frozen=True):
    """The executor dropped task ``run_id``, not started, as asked."""

    ex_id: int
    run_id: int


class ExecutorEnvError(Struct, frozen=True):
    """The executor could not import its environment."""

    ex_id: int
    info: dict[str, str]
    frames: list[Any]


class ExecutorDied(Struct, frozen=True):
    """The executor ended (or was stopped); its running task ends as ``outcome`` says,
    with ``info``."""

    ex_id: int
    info: dict[str, str]
    outcome: Outcome = Outcome.CRASHED  # ERROR: stopped for what the task did (its writes)


class ExecutorLeaving(Struct, frozen=True):
    """The executor ends after the task it reported last (that task left threads or
    processes running); the tasks it was handed after that one have not started."""

    ex_id: int


class TaskCalled(Struct, frozen=True):
    """The running task ``run_id`` called a ``@distributed`` function."""

    ex_id: int
    run_id: int


class TaskParked(Struct, frozen=True):
    """The running task ``run_id`` waits for its calls."""

    ex_id: int
    run_id: int


class TaskResumed(Struct, frozen=True):
    """The running task ``run_id`` goes on after waiting for its calls."""

    ex_id: int
    run_id: int


class CancelAsked(Struct, frozen=True):
    """``peer`` asked to cancel its task ``task_id`` (a Main's ``Cancel``, a delegate gone, a
    cancelled call placed here)."""

    peer: bytes
    task_id: int


class RevokeAsked(Struct, frozen=True):
    """``peer`` takes back its tasks ``task_ids`` that have not started (to run elsewhere)."""

    peer: bytes
    task_ids: tuple[int, ...]


class HandBack(Struct, frozen=True):
    """Every task not started goes back to its Main; ``vacate``: running ones too."""

    vacate: bool = False


class Resize(Struct, frozen=True):
    slots: int


class QuotaSet(Struct, frozen=True):
    """``peer`` may hold at most ``limit`` slots (None: any), with priority ``weight``,
    counted in ``account`` together with the other Mains of that account (its public key's:
    several Mains of one key share that key's quota, fair share and queued bytes); ``b""``:
    the Main counts alone (a Main without a key)."""

    peer: bytes
    limit: int | None
    weight: float
    account: bytes = b""


class OwnerStateChanged(Struct, frozen=True):
    """What the Mains are told the worker does (the owner's word, its hours and load);
    ``vacate``: stopping to lend stops the running tasks too."""

    state: OwnerWord
    vacate: bool = False


class MainLeft(Struct, frozen=True):
    """``peer`` left. ``private``: its context if no other Main could use its executors (a
    sandbox is one Main's): their idle ones stop at once, not after ``idle_after``."""

    peer: bytes
    private: str = ""


class Warm(Struct, frozen=True):
    """``peer`` asks for ``count`` idle executors of ``key`` ahead of its calls. ``used``:
    the (distribution, context) of every Main connected; idle executors of others may stop
    to make room (those of a Main that left: a lingering daemon's last run, its workspace
    edited since). None: none stop."""

    key: EnvKey
    peer: bytes
    count: int
    used: tuple[tuple[str, str], ...] | None = None


class Turn(Struct, frozen=True):
    """A turn of the daemon's loop: start what fits and send what was handed out."""


class Tick(Struct, frozen=True):
    """The clock moved on: timeouts, idle executors, slots held by waiting tasks."""


Event: TypeAlias = (
    TaskSubmitted | TaskQueued | TaskDeferred | DistReady | DistUnavailable | DistReplaced
    | EnvReady | EnvFailed | EnvDropped | ObjectsArrived | ObjectsUnavailable | ExecutorReady
    | TaskDone | TaskSkipped | ExecutorEnvError | ExecutorDied | ExecutorLeaving | TaskCalled
    | TaskParked | TaskResumed | CancelAsked | RevokeAsked | HandBack | Resize | QuotaSet
    | OwnerStateChanged | MainLeft
    | Warm | Turn | Tick)


# --- actions ---------------------------------------------------------------------------------


class Spawn(Struct):
    ex_id: int
    key: EnvKey


class Send(Struct):
    ex_id: int
    runs: list[Run]


class Skip(Struct):
    ex_id: int
    run_id: int


class Kill(Struct):
    ex_id: int


class Report(Struct):
    task: QueuedTask
    outcome: Outcome
    info: dict[str, str] = field(default_factory=dict)
    frames: list[Any] = field(default_factory=list)
    shm: dict[str, int] | None = None  # result frames in /dev/shm


class Admit(Struct):
    task: QueuedTask


class Rewaited(Struct, frozen=True):
    peer: bytes


class StuckChanged(Struct, frozen=True):
    stuck: bool


class StuckHandedBack(Struct, frozen=True):
    count: int  # tasks that went back


class Vacating(Struct, frozen=True):
    running: int  # executors with a task, stopped


class MainDropped(Struct, frozen=True):
    peer: bytes
    queued: int  # its tasks not started, forgotten
    running: int  # its running tasks, stopped


class GaveBack(Struct, frozen=True):
    """Of the tasks ``peer`` took back: ``given`` left the queue and will not run here;
    ``kept`` had started (or were handed to an executor, done or unknown) and stay."""

    peer: bytes
    given: list[int]
    kept: list[int]


class Drained(Struct, frozen=True):
    pass


Action: TypeAlias = (Spawn | Send | Skip | Kill | Report | Admit | Rewaited | StuckChanged
                     | StuckHandedBack | Vacating | MainDropped | GaveBack | Drained)

"""The worker core's former interface, one method per event: each builds the event and calls
``Core.handle``. The daemon calls these until it hands its events to ``handle`` itself.

What the core now says with actions, these turn back into what the daemon reads: ``Rewaited``
into the ``rewaited`` set, ``MainDropped`` into ``drop_main``'s counts, ``park``'s and
``unpark``'s answer; ``StuckChanged`` is left out (the daemon times a stuck worker itself).
"""

from __future__ import annotations

from typing import Any, TypeAlias, cast

from distrib.wire._messages import Outcome
from distrib.worker._core import Core
from distrib.worker._events import Action as CoreAction
from distrib.worker._events import (
    Cancel,
    DistFailed,
    DistReady,
    DistReplaced,
    EnvDropped,
    EnvFailed,
    EnvKey,
    EnvReady,
    Event,
    ExecutorDied,
    ExecutorEnvError,
    ExecutorReady,
    HandBack,
    Kill,
    MainDropped,
    MainLeft,
    ObjectsArrived,
    ObjectsFailed,
    QuotaSet,
    Report,
    Resize,
    Rewaited,
    Run,
    Send,
    Skip,
    Spawn,
    StuckChanged,
    TaskCalled,
    TaskDone,
    TaskParked,
    TaskQueued,
    TaskResumed,
    TaskSkipped,
    Tick,
    Turn,
    Warm,
    Withdrawn,
)
from distrib.worker._corestate import PREFETCH, SKIP_GRACE, Executor
from distrib.worker._state import QueuedTask

# What these methods return: the actions the daemon carries out itself.
Action: TypeAlias = Spawn | Send | Skip | Kill | Report
_PASSED = (Spawn, Send, Skip, Kill, Report)

__all__ = ["Action", "EnvKey", "Executor", "Kill", "PREFETCH", "Report", "Run", "SKIP_GRACE",
           "Send", "Skip", "Slots", "Spawn", "Withdrawn"]


class Slots(Core):  # (goes once the daemon calls ``handle``)
    """``Core`` with one method per event, as the daemon still calls it."""

    def __init__(self, slots: int, idle_after: float = 300.0,
                 max_queued: int = 256 << 20, max_parked: int | None = None) -> None:
        super().__init__(slots, idle_after, max_queued, max_parked, hand_back_after=None)
        self.rewaited: set[bytes] = set()  # Mains whose waiting tasks changed (Waiting to say)
        self._dropped: MainDropped | None = None

    @property
    def paused(self) -> bool:
        return self.state != "serving"

    @paused.setter
    def paused(self, paused: bool) -> None:  # (the daemon hands back itself, then)
        self.state = "paused" if paused else "serving"

    def _do(self, event: Event, now: float = 0.0) -> list[Action]:
        out: list[CoreAction] = self.handle(event, now)
        if all(isinstance(a, _PASSED) for a in out):  # (the common case: no copy)
            return cast(list[Action], out)
        kept: list[Action] = []
        for action in out:
            if isinstance(action, _PASSED):
                kept.append(action)
            elif isinstance(action, Rewaited):
                self.rewaited.add(action.peer)
            elif isinstance(action, MainDropped):
                self._dropped = action
            else:  # (the daemon follows a stuck worker itself)
                assert isinstance(action, StuckChanged), action
        return kept

    def submit(self, task: QueuedTask) -> list[Action]:
        return self._do(TaskQueued(task))

    def dist_ready(self, dist: str) -> None:
        self._do(DistReady(dist))

    def env_ready(self, env: str) -> None:
        self._do(EnvReady(env))

    def env_dropped(self, env: str) -> None:
        self._do(EnvDropped(env))

    def env_failed(self, env: str, info: dict[str, str], peer: bytes | None = None
                   ) -> list[Action]:
        return self._do(EnvFailed(env, info, peer))

    def objects_arrived(self, peer: bytes, keys: set[str]) -> None:
        self._do(ObjectsArrived(peer, frozenset(keys)))

    def objects_failed(self, peer: bytes, keys: set[str], info: dict[str, str]
                       ) -> list[Action]:
        return self._do(ObjectsFailed(peer, frozenset(keys), info))

    def dist_failed(self, dist: str, info: dict[str, str], peer: bytes | None) -> list[Action]:
        return self._do(DistFailed(dist, info, peer))

    def env_replaced(self, dist: str) -> list[Action]:
        return self._do(DistReplaced(dist))

    def executor_ready(self, ex_id: int, now: float) -> None:
        self._do(ExecutorReady(ex_id), now)

    def task_done(self, ex_id: int, key: int, outcome: Outcome, info: dict[str, str],
                  frames: list[Any], now: float, shm: dict[str, int] | None = None
                  ) -> list[Action]:
        return self._do(TaskDone(ex_id, key, outcome, info, frames, shm), now)

    def task_skipped(self, ex_id: int, key: int, now: float) -> list[Action]:
        return self._do(TaskSkipped(ex_id, key), now)

    def env_error(self, ex_id: int, info: dict[str, str], frames: list[Any]) -> list[Action]:
        return self._do(ExecutorEnvError(ex_id, info, frames))

    def executor_died(self, ex_id: int, info: dict[str, str]) -> list[Action]:
        return self._do(ExecutorDied(ex_id, info))

    def nested(self, ex_id: int, key: int) -> list[Action]:
        return self._do(TaskCalled(ex_id, key))

    def park(self, ex_id: int, key: int, now: float) -> bool:
        """Whether it was taken (its Main hears it)."""
        taken = self._waits(ex_id, key) is False
        self._do(TaskParked(ex_id, key), now)
        return taken

    def unpark(self, ex_id: int, key: int) -> bool:
        """Whether it was parked or holding its slots (its Main hears it)."""
        waited = self._waits(ex_id, key) is True
        self._do(TaskResumed(ex_id, key))
        return waited

    def _waits(self, ex_id: int, key: int) -> bool | None:
        """Whether the running task ``key`` of ``ex_id`` waits for its calls (None: it is not
        running)."""
        ex = self.executors.get(ex_id)
        if ex is None or not ex.runs or ex.runs[0].key != key:
            return None
        return ex.parked or ex.blocked

    def cancel(self, peer: bytes, task_id: int, now: float) -> list[Action]:
        return self._do(Cancel(peer, task_id), now)

    def hand_back(self, vacate: bool = False) -> list[Action]:
        return self._do(HandBack(vacate))

    def resize(self, slots: int) -> list[Action]:
        return self._do(Resize(slots))

    def set_quota(self, peer: bytes, limit: int | None, weight: float) -> list[Action]:
        return self._do(QuotaSet(peer, limit, weight))

    def drop_main(self, peer: bytes) -> tuple[list[Action], int, int]:
        """Returns the actions, and how many tasks were queued and how many running."""
        actions = self._do(MainLeft(peer))
        assert self._dropped is not None
        dropped, self._dropped = self._dropped, None
        return actions, dropped.queued, dropped.running

    def tick(self, now: float) -> list[Action]:
        return self._do(Tick(), now)

    def schedule(self, now: float) -> list[Action]:
        return self._do(Turn(), now)

    def warm(self, key: EnvKey, peer: bytes, count: int, now: float) -> list[Action]:
        return self._do(Warm(key, peer, count), now)

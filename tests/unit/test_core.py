"""The worker core through its one entry point, ``Core.handle``: parking, nested calls,
``max_parked`` and the depth rule, the checks on a Submit, the owner's state, a stuck worker.
Every event is followed by ``check_invariants``."""

from __future__ import annotations

from typing import Any

import pytest

from distrib.wire._messages import Outcome
from distrib.worker._core import Core
from distrib.worker._events import (
    Action,
    Admit,
    CancelAsked,
    DistReady,
    Drained,
    EnvKey,
    Event,
    ExecutorReady,
    Kill,
    MainDropped,
    MainLeft,
    OwnerStateChanged,
    Report,
    Rewaited,
    Send,
    Skip,
    Spawn,
    StuckChanged,
    StuckHandedBack,
    TaskCalled,
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
)
from distrib.worker._corestate import STUCK_HAND_BACK
from distrib.worker._nesting import PARK_GRACE
from distrib.worker._state import QueuedTask


def qt(task_id: int, peer: bytes = b"A", threads: int = 1, depth: int = 0) -> QueuedTask:
    return QueuedTask(peer, task_id, "d", threads, None, [b"x"], depth=depth)


def of(kind: type, actions: list[Action]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def reports(actions: list[Action]) -> list[tuple[int, Outcome]]:
    return [(a.task.task_id, a.outcome) for a in of(Report, actions)]


class Worker:
    """A core, and the daemon's side of it: executors become ready as soon as they are
    spawned, and the invariants are checked after every event."""

    def __init__(self, slots: int, **kwargs: Any) -> None:
        self.core = Core(slots, **kwargs)
        self.now = 0.0
        self.do(DistReady("d"))

    def do(self, event: Event, at: float | None = None) -> list[Action]:
        if at is not None:
            self.now = at
        out = self.core.handle(event, self.now)
        self.core.check_invariants()
        for spawn in of(Spawn, out):
            self.core.handle(ExecutorReady(spawn.ex_id), self.now)
            self.core.check_invariants()
        return out

    def submit(self, *tasks: QueuedTask) -> list[Action]:
        out: list[Action] = []
        for task in tasks:
            out += self.do(TaskQueued(task))
        return out + self.turn()

    def turn(self, at: float | None = None) -> list[Action]:
        """A turn, and the one after it that sends what executors spawned in it hold."""
        out = self.do(Turn(), at)
        return out + self.do(Turn())

    def ex_of(self, task_id: int, peer: bytes = b"A") -> tuple[int, int]:
        """The executor running ``task_id``, and its run id there."""
        for ex in self.core.executors.values():
            if ex.runs and ex.runs[0].task.task_id == task_id and ex.runs[0].task.peer == peer:
                return ex.ex_id, ex.runs[0].run_id
        raise AssertionError(f"task {task_id} does not run")

    def running(self) -> set[int]:
        return {ex.runs[0].task.task_id for ex in self.core.executors.values() if ex.runs}

    def park(self, task_id: int, peer: bytes = b"A") -> list[Action]:
        ex, run_id = self.ex_of(task_id, peer)
        return self.do(TaskCalled(ex, run_id)) + self.do(TaskParked(ex, run_id))

    def resume(self, task_id: int, peer: bytes = b"A") -> list[Action]:
        return self.do(TaskResumed(*self.ex_of(task_id, peer)))

    def done(self, task_id: int, peer: bytes = b"A") -> list[Action]:
        ex, run_id = self.ex_of(task_id, peer)
        return self.do(TaskDone(ex, run_id, Outcome.OK, {}, []))


# --- parking ---------------------------------------------------------------------------------


def test_a_parked_task_lends_its_slots_and_its_main_hears_it() -> None:
    w = Worker(1)
    w.submit(qt(1))
    out = w.park(1)
    assert of(Rewaited, out) == [Rewaited(b"A")]
    assert w.core.busy == 0 and w.core.counters["parks"] == 1
    assert w.core.waiting_for_calls(b"A") == ([1], [], False)
    w.submit(qt(2, depth=1))  # its call runs on the slot it lent
    assert w.running() == {1, 2}
    assert w.core.busy == 1
    out = w.resume(1)  # (over the count for a moment: both hold the one slot)
    assert of(Rewaited, out) == [Rewaited(b"A")] and w.core.busy == 2
    w.done(2)
    w.done(1)
    assert w.core.busy == 0 and w.running() == set()


def test_parking_again_or_for_a_task_that_does_not_run_changes_nothing() -> None:
    w = Worker(1)
    w.submit(qt(1))
    w.park(1)
    ex, run_id = w.ex_of(1)
    assert w.do(TaskParked(ex, run_id)) == []
    assert w.do(TaskParked(ex, run_id + 1)) == [] and w.do(TaskResumed(ex, run_id + 1)) == []
    assert w.do(TaskParked(99, 1)) == [] and w.core.counters["parks"] == 1


def test_a_task_that_called_gets_nothing_prefetched_and_gives_back_what_it_had() -> None:
    w = Worker(1)
    w.submit(qt(1), qt(2))
    ex, run_id = w.ex_of(1)
    assert [r.task.task_id for r in w.core.executors[ex].runs] == [1, 2]  # prefetched
    out = w.do(TaskCalled(ex, run_id))
    (skip,) = of(Skip, out)
    out = w.do(TaskSkipped(ex, skip.run_id))
    assert w.core.queues.count(b"A") == 1  # back to the queue, not to its Main
    w.submit(qt(3))
    assert [r.task.task_id for r in w.core.executors[ex].runs] == [1]  # none behind it


def test_within_the_grace_a_parked_tasks_slots_go_only_to_deeper_tasks_of_its_main() -> None:
    w = Worker(1)
    w.submit(qt(1))
    w.park(1)
    w.submit(qt(2))  # as deep as the parked one: it would call and wait in turn
    assert w.running() == {1}
    w.submit(qt(3, peer=b"B"))  # another Main's: its floor is not raised
    assert w.running() == {1, 3}
    w.done(3, b"B")
    w.turn(at=PARK_GRACE / 2)
    assert w.running() == {1}
    w.turn(at=PARK_GRACE * 2)  # no call came: the slot goes to any task
    assert w.running() == {1, 2}


def test_at_max_parked_a_waiting_task_holds_its_slots_and_only_deeper_tasks_start() -> None:
    w = Worker(3, max_parked=1)
    w.submit(qt(1))
    w.park(1)
    w.submit(qt(2, depth=1))
    out = w.park(2)  # the cap: it holds its slot
    assert of(Rewaited, out) == [Rewaited(b"A")]
    assert w.core.waiting_for_calls(b"A") == ([1], [2], False)
    assert w.core.busy == 1 and w.core.counters["parks"] == 1
    w.submit(qt(3, peer=b"B"), qt(4, depth=1))  # no deeper than the deepest waiting one
    assert w.running() == {1, 2}
    w.turn(at=1.0)  # (the grace is long over: the cap keeps them out)
    assert w.running() == {1, 2}
    w.submit(qt(5, depth=2))
    assert w.running() == {1, 2, 5}
    out = w.resume(1)  # room under the cap: the blocked task lends its slot now
    assert set(of(Rewaited, out)) == {Rewaited(b"A")}
    assert w.core.waiting_for_calls(b"A") == ([2], [], False)
    assert w.core.counters["parks"] == 2 and w.core.busy == 2


def test_at_max_parked_the_last_free_slot_goes_only_to_a_task_deeper_than_all_held() -> None:
    # Seen under load: tasks of one depth took every slot before the first of them called;
    # each then waited for its calls holding its slot (the cap), and none was left to run
    # them (all slots held by waiting tasks: handed back, NestedDeadlock on one worker).
    w = Worker(4, max_parked=1)
    w.submit(qt(1))
    w.park(1)  # the cap: the next task that calls holds its slot
    w.submit(*(qt(i, depth=1) for i in range(2, 6)))
    started = w.running() - {1}
    assert len(started) == 3  # the fourth would take the last slot, no deeper than them
    for task_id in sorted(started):
        w.park(task_id)  # each waits holding its slot
    assert w.core.waiting_for_calls(b"A") == ([1], sorted(started), False)
    w.submit(qt(6, depth=2))  # a call of theirs: deeper than every task holding a slot
    assert 6 in w.running() and not w.core.stuck()
    w.done(6)
    for task_id in sorted(started):
        w.resume(task_id)
        w.done(task_id)
    w.turn()
    assert len(w.running() - {1}) == 1  # the fourth, once slots are free


def test_most_parked_counts_the_peak() -> None:
    w = Worker(2, max_parked=4)
    w.submit(qt(1), qt(2))
    w.park(1)
    w.park(2)
    w.resume(1)
    assert w.core.counters["most_parked"] == 2


def test_every_slot_held_by_a_waiting_task_is_said_then_queued_tasks_go_back() -> None:
    w = Worker(1, max_parked=0)
    w.submit(qt(1))
    w.park(1)  # blocked: it holds its slot
    assert w.core.stuck()
    assert of(StuckChanged, w.turn()) == [StuckChanged(True)]
    assert of(StuckChanged, w.turn()) == []  # (said once)
    w.submit(qt(2), qt(3, peer=b"B"))
    assert w.do(Tick(), at=0.1) == []
    assert w.do(Tick(), at=0.1 + STUCK_HAND_BACK / 2) == []
    out = w.do(Tick(), at=0.2 + STUCK_HAND_BACK)
    assert of(StuckHandedBack, out) == [StuckHandedBack(2)]
    assert sorted(reports(out)) == [(2, Outcome.DEFERRED), (3, Outcome.DEFERRED)]
    w.resume(1)
    assert of(StuckChanged, w.turn()) == [StuckChanged(False)]


def test_a_parked_task_that_ends_frees_nothing_twice() -> None:
    w = Worker(2)
    w.submit(qt(1), qt(2))
    w.park(1)
    assert w.core.busy == 1
    out = w.done(1)
    assert of(Rewaited, out) == [Rewaited(b"A")] and w.core.busy == 1


def test_a_parked_executor_that_dies_gives_its_task_back_as_crashed() -> None:
    from distrib.worker._events import ExecutorDied

    w = Worker(1)
    w.submit(qt(1))
    w.park(1)
    ex, _ = w.ex_of(1)
    out = w.do(ExecutorDied(ex, {"type": "distrib.WorkerCrashed"}))
    assert reports(out) == [(1, Outcome.CRASHED)] and of(Kill, out) == [Kill(ex)]
    assert of(Rewaited, out) == [Rewaited(b"A")] and w.core.busy == 0


def test_an_executor_leaving_after_a_task_gives_back_what_it_was_handed_uncrashed() -> None:
    from distrib.worker._events import ExecutorLeaving

    w = Worker(1)
    w.submit(qt(1), qt(2))
    ex, _ = w.ex_of(1)
    handed = [r.task.task_id for r in w.core.executors[ex].runs]
    w.done(1)
    out = w.do(ExecutorLeaving(ex))
    assert reports(out) == [] and of(Kill, out) == [Kill(ex)]
    w.turn()
    if handed == [1, 2]:  # (it was handed both: the second goes to another executor)
        assert w.ex_of(2)[0] != ex
    assert w.running() == {2} and w.core.counters["executors_crashed"] == 0
    assert w.do(ExecutorLeaving(ex)) == []  # (said again, or late: nothing)


# --- a Submit, the owner, a Main leaving -----------------------------------------------------


def test_a_submitted_task_is_admitted_or_refused_in_one_place() -> None:
    w = Worker(2)
    task = qt(1)
    assert w.do(TaskSubmitted(task)) == [Admit(task)]
    assert reports(w.do(TaskSubmitted(qt(2), problem="no wheel"))) == [(2, Outcome.ENV_ERROR)]
    assert reports(w.do(TaskSubmitted(qt(3, threads=3)))) == [(3, Outcome.ERROR)]
    w.do(OwnerStateChanged("paused"))
    assert reports(w.do(TaskSubmitted(qt(4)))) == [(4, Outcome.DEFERRED)]
    assert reports(w.do(TaskQueued(qt(5)))) == [(5, Outcome.DEFERRED)]  # (a call placed here)
    assert w.core.counters["deferred"] == 2


def test_pausing_hands_back_what_did_not_start_and_vacating_stops_the_rest() -> None:
    w = Worker(1)
    w.submit(qt(1), qt(2), qt(3))
    out = w.do(OwnerStateChanged("paused"))
    assert (3, Outcome.DEFERRED) in reports(out) and of(Skip, out)  # 2 was prefetched
    assert w.do(OwnerStateChanged("serving")) == []
    w.submit(qt(4))
    out = w.do(OwnerStateChanged("paused", vacate=True))
    assert of(Vacating, out) == [Vacating(1)]
    assert (1, Outcome.DEFERRED) in reports(out) and w.running() == set()


def test_a_draining_worker_says_drained_once_nothing_runs() -> None:
    w = Worker(1)
    w.submit(qt(1), qt(2))
    out = w.do(OwnerStateChanged("draining"))
    assert of(Drained, w.turn()) == []
    skip = of(Skip, out)[0]
    w.do(TaskSkipped(w.ex_of(1)[0], skip.run_id))
    w.done(1)
    assert of(Drained, w.turn()) == [Drained()]
    assert of(Drained, w.turn()) == []


def test_a_main_that_leaves_is_counted_and_its_calls_stop() -> None:
    w = Worker(2)
    w.submit(qt(1), qt(2), qt(3), qt(4, peer=b"B"))
    out = w.do(MainLeft(b"A"))
    assert of(MainDropped, out) == [MainDropped(b"A", 2, 1)]
    assert w.running() == {4} and of(Kill, out)  # its running task is stopped
    assert reports(w.do(CancelAsked(b"B", 4))) == [(4, Outcome.CANCELLED)]


def test_warming_stops_idle_executors_of_a_distribution_no_connected_main_uses() -> None:
    w = Worker(2)
    w.do(DistReady("e"))
    old, new = EnvKey("d", 1, "c"), EnvKey("e", 1, "c")  # (the same script, edited)
    assert len(of(Spawn, w.do(Warm(old, b"A", 2)))) == 2  # the last run's, idle now
    w.do(MainLeft(b"A"))
    out = w.do(Warm(new, b"B", 2))  # (as before: without ``used``, nothing stops)
    assert not of(Spawn, out) and not of(Kill, out)
    out = w.do(Warm(new, b"B", 2, used=(("e", "c"), ("d", "c"))))  # a Main uses them still
    assert not of(Spawn, out) and not of(Kill, out)
    out = w.do(Warm(new, b"B", 2, used=(("e", "c"),)))
    assert len(of(Kill, out)) == 2 and len(of(Spawn, out)) == 2
    assert {e.key for e in w.core.executors.values()} == {new}



def test_the_idle_executors_of_a_sandboxed_main_stop_as_it_leaves_and_others_wait() -> None:
    w = Worker(4)
    mine, shared = EnvKey("d", 1, "A-box"), EnvKey("d", 1, "plain")
    assert len(of(Spawn, w.do(Warm(mine, b"A", 2)))) == 2
    assert len(of(Spawn, w.do(Warm(shared, b"B", 2)))) == 2
    w.do(MainLeft(b"B"))  # (its context can come back with the next run: kept)
    out = w.do(MainLeft(b"A", private="A-box"))  # (a sandbox of its own: none other can)
    assert len(of(Kill, out)) == 2
    assert {e.key for e in w.core.executors.values()} == {shared}
    assert not of(Kill, w.do(Tick(), at=60.0))  # (the others wait idle_after, as before)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_turn_sends_what_an_executor_holds_once_it_is_ready(threads: int) -> None:
    w = Worker(2)
    out = w.submit(qt(1, threads=threads))
    assert [r.task.task_id for s in of(Send, out) for r in s.runs] == [1]

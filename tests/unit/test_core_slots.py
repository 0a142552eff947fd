"""The worker core's slots and executors, driven with events through its one entry point,
``Core.handle``: no sockets, no processes, no clock; the invariants are checked after each
event."""

from __future__ import annotations

from typing import Any

from distrib.wire._messages import Outcome
from distrib.worker._core import Core
from distrib.worker._corestate import PREFETCH, SKIP_GRACE
from distrib.worker._events import (
    Action,
    CancelAsked,
    DistReady,
    DistReplaced,
    EnvKey,
    Event,
    ExecutorDied,
    ExecutorEnvError,
    ExecutorReady,
    HandBack,
    Kill,
    MainDropped,
    MainLeft,
    OwnerStateChanged,
    QuotaSet,
    Report,
    Resize,
    Send,
    Skip,
    Spawn,
    TaskDone,
    TaskQueued,
    TaskSkipped,
    Tick,
    Turn,
)
from distrib.worker._state import QueuedTask


class Checked(Core):
    """The core, its invariants checked after every event."""

    def handle(self, event: Event, now: float) -> list[Action]:
        out = super().handle(event, now)
        self.check_invariants()
        return out


CRASH = {"type": "distrib.WorkerCrashed", "message": "died", "traceback": ""}


def qt(task_id: int, peer: bytes = b"A", dist: str = "d", threads: int = 1,
       timeout: float | None = None, size: int = 1) -> QueuedTask:
    return QueuedTask(peer, task_id, dist, threads, timeout, [b"x" * size])


def of(kind: type, actions: list[Action]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def reports(actions: list[Action]) -> list[tuple[int, Outcome]]:
    return [(a.task.task_id, a.outcome) for a in of(Report, actions)]


def sent(actions: list[Action]) -> dict[int, list[int]]:
    """Executor id -> task ids handed to it."""
    return {a.ex_id: [r.task.task_id for r in a.runs] for a in of(Send, actions)}


def started(machine: Checked, *tasks: QueuedTask, now: float = 0.0) -> list[Action]:
    """Submit tasks of a ready environment and schedule them."""
    machine.handle(DistReady("d"), 0.0)
    for t in tasks:
        assert machine.handle(TaskQueued(t), 0.0) == []
    return machine.handle(Turn(), now)


def test_tasks_wait_for_their_environment_then_start_one_executor_per_slot() -> None:
    s = Checked(2)
    for i in (1, 2, 3):
        s.handle(TaskQueued(qt(i)), 0.0)
    assert s.handle(Turn(), 0.0) == []  # environment not ready: nothing starts
    s.handle(DistReady("d"), 0.0)
    actions = s.handle(Turn(), 0.0)
    spawns = of(Spawn, actions)
    assert [a.key for a in spawns] == [EnvKey("d", 1)] * 2
    assert of(Send, actions) == []  # the executors have not imported the environment yet
    assert s.busy == 2 and s.waiting() == 1
    s.handle(ExecutorReady(spawns[0].ex_id), 0.0)
    assert sent(s.handle(Turn(), 0.0)) == {spawns[0].ex_id: [1, 3]}  # its task, and the next one


def test_a_finished_task_is_reported_and_its_executor_reused() -> None:
    s = Checked(1)
    ex = of(Spawn, started(s, qt(1), qt(2)))[0].ex_id
    s.handle(ExecutorReady(ex), 0.0)
    assert sent(s.handle(Turn(), 0.0)) == {ex: [1, 2]}
    actions = s.handle(TaskDone(ex, s.running(ex).run_id, Outcome.OK, {}, [b"r"]), 1.0)
    assert reports(actions) == [(1, Outcome.OK)] and of(Report, actions)[0].frames == [b"r"]
    assert s.running(ex).task.task_id == 2 and s.busy == 1
    s.handle(TaskDone(ex, s.running(ex).run_id, Outcome.OK, {}, []), 2.0)
    assert s.busy == 0 and s.counters["tasks_done"] == 2 and s.counters["executors_started"] == 1


def test_tiny_tasks_are_prefetched_deeper_than_slow_ones() -> None:
    s = Checked(1)
    ex = of(Spawn, started(s, *[qt(i) for i in range(20)]))[0].ex_id
    s.handle(ExecutorReady(ex), 0.0)
    assert len(sent(s.handle(Turn(), 0.0))[ex]) == 2  # unknown run time: one behind the running one
    now = 0.0
    for _ in range(10):  # a run of tasks finishing in a millisecond each
        now += 0.001
        s.handle(TaskDone(ex, s.running(ex).run_id, Outcome.OK, {}, []), now)
        s.handle(Turn(), now)
    assert len(s.executors[ex].runs) == PREFETCH + 1


def test_large_calls_are_not_prefetched() -> None:
    s = Checked(1)
    ex = of(Spawn, started(s, qt(1), qt(2, size=1 << 20)))[0].ex_id
    s.handle(ExecutorReady(ex), 0.0)
    assert sent(s.handle(Turn(), 0.0)) == {ex: [1]}


def test_a_crash_reports_the_running_task_and_requeues_the_prefetched_one() -> None:
    s = Checked(1)
    ex = of(Spawn, started(s, qt(1), qt(2)))[0].ex_id
    s.handle(ExecutorReady(ex), 0.0)
    s.handle(Turn(), 0.0)
    actions = s.handle(ExecutorDied(ex, CRASH), 0.0)
    assert reports(actions) == [(1, Outcome.CRASHED)]
    assert of(Report, actions)[0].info == CRASH
    assert of(Kill, actions) == [Kill(ex)]
    assert s.busy == 0 and s.counters["executors_crashed"] == 1 and s.waiting() == 1
    again = s.handle(Turn(), 1.0)
    assert len(of(Spawn, again)) == 1  # a fresh executor for the requeued task


def test_an_environment_that_fails_to_import_fails_its_tasks_and_no_others() -> None:
    s = Checked(2)
    s.handle(DistReady("other"), 0.0)
    ex = of(Spawn, started(s, qt(1), qt(2), qt(3)))[0].ex_id
    s.handle(TaskQueued(qt(9, dist="other")), 0.0)
    error = {"type": "builtins.ImportError", "message": "no", "traceback": ""}
    actions = s.handle(ExecutorEnvError(ex, error, [b"e"]), 0.0)
    assert sorted(reports(actions)) == [(1, Outcome.ENV_ERROR), (3, Outcome.ENV_ERROR)]
    assert s.queues.count(b"A") == 1  # task 9 of the other environment waits on
    # this Main's: fails at once
    assert reports(s.handle(TaskQueued(qt(4)), 0.0)) == [(4, Outcome.ENV_ERROR)]
    assert [a.key.dist for a in of(Spawn, s.handle(Turn(), 1.0))] == ["other"]  # on the freed slot
    running = {r.task.task_id for e in s.executors.values() for r in e.runs}
    assert running == {2, 9} and s.waiting() == 0
    # another Main starts over
    assert s.handle(TaskQueued(qt(5, peer=b"B")), 0.0) == [] and s.waiting() == 1


def test_cancel_withdraws_a_queued_task_skips_a_handed_one_and_stops_a_running_one() -> None:
    s = Checked(1)
    ex = of(Spawn, started(s, qt(1), qt(2), qt(3)))[0].ex_id
    s.handle(ExecutorReady(ex), 0.0)
    s.handle(Turn(), 0.0)  # task 1 runs, task 2 waits in the executor, task 3 is queued
    assert reports(s.handle(CancelAsked(b"A", 3), 0.0)) == [(3, Outcome.CANCELLED)]
    skip = s.handle(CancelAsked(b"A", 2), 0.0)
    assert of(Skip, skip) and reports(skip) == []
    assert reports(s.handle(TaskSkipped(ex, of(Skip, skip)[0].run_id), 0.1)) == [
        (2, Outcome.CANCELLED)]
    stop = s.handle(CancelAsked(b"A", 1), 0.2)
    assert of(Kill, stop) == [Kill(ex)] and reports(stop) == [(1, Outcome.CANCELLED)]
    assert s.busy == 0 and s.executors == {}
    assert s.handle(CancelAsked(b"A", 99), 0.3) == []  # unknown: nothing to do


def test_a_withdrawn_task_that_started_before_its_skip_is_stopped_after_a_grace() -> None:
    s = Checked(1)
    ex = of(Spawn, started(s, qt(1), qt(2)))[0].ex_id
    s.handle(ExecutorReady(ex), 0.0)
    s.handle(Turn(), 0.0)
    s.handle(CancelAsked(b"A", 2), 0.0)
    s.handle(TaskDone(ex, s.running(ex).run_id, Outcome.OK, {}, []), 1.0)  # task 2 is now the head
    assert s.handle(Tick(), 1.0 + SKIP_GRACE / 2) == []
    actions = s.handle(Tick(), 1.0 + SKIP_GRACE * 2)
    assert of(Kill, actions) == [Kill(ex)] and reports(actions) == [(2, Outcome.CANCELLED)]


def test_a_task_past_its_timeout_is_stopped_and_the_next_requeued() -> None:
    s = Checked(1)
    ex = of(Spawn, started(s, qt(1, timeout=5.0), qt(2), now=10.0))[0].ex_id
    s.handle(ExecutorReady(ex), 0.0)
    s.handle(Turn(), 10.0)
    assert s.handle(Tick(), 14.0) == []
    actions = s.handle(Tick(), 15.5)
    assert reports(actions) == [(1, Outcome.TIMEOUT)] and of(Kill, actions) == [Kill(ex)]
    assert s.waiting() == 1


def test_a_main_that_leaves_is_forgotten_and_others_go_on() -> None:
    s = Checked(2)
    s.handle(DistReady("d"), 0.0)
    for t in (qt(1), qt(2, peer=b"B"), qt(3), qt(4)):
        s.handle(TaskQueued(t), 0.0)
    spawns = of(Spawn, s.handle(Turn(), 0.0))
    for sp in spawns:
        s.handle(ExecutorReady(sp.ex_id), 0.0)
    s.handle(Turn(), 0.0)
    actions = s.handle(MainLeft(b"A"), 0.0)
    (dropped,) = of(MainDropped, actions)
    queued, running = dropped.queued, dropped.running
    assert reports(actions) == []  # nobody to report to
    # (the one handed to an executor and not started is asked back, and counted as queued)
    assert running == 1 and queued + running == 3 and len(of(Skip, actions)) <= 1
    assert s.waiting(b"A") == 0 or all(
        r.withdrawn is not None for e in s.executors.values() for r in e.runs
        if r.task.peer == b"A")
    assert any(r.task.peer == b"B" for e in s.executors.values() for r in e.runs)


def test_a_task_needing_more_threads_than_the_worker_has_fails_at_once() -> None:
    s = Checked(2)
    actions = s.handle(TaskQueued(qt(1, threads=3)), 0.0)
    assert reports(actions) == [(1, Outcome.ERROR)]
    assert "offers 2" in of(Report, actions)[0].info["message"]


def test_a_new_environment_retires_an_idle_executor_of_another() -> None:
    s = Checked(1)
    s.handle(DistReady("e"), 0.0)
    ex = of(Spawn, started(s, qt(1)))[0].ex_id
    s.handle(ExecutorReady(ex), 0.0)
    s.handle(Turn(), 0.0)
    s.handle(TaskDone(ex, s.running(ex).run_id, Outcome.OK, {}, []), 1.0)
    s.handle(TaskQueued(qt(2, dist="e")), 0.0)
    actions = s.handle(Turn(), 1.0)
    assert of(Kill, actions) == [Kill(ex)] and [a.key.dist for a in of(Spawn, actions)] == ["e"]


def test_an_outcome_for_a_task_not_running_is_treated_as_a_broken_executor() -> None:
    s = Checked(1)
    ex = of(Spawn, started(s, qt(1)))[0].ex_id
    s.handle(ExecutorReady(ex), 0.0)
    s.handle(Turn(), 0.0)
    actions = s.handle(TaskDone(ex, 12345, Outcome.OK, {}, []), 1.0)
    assert reports(actions) == [(1, Outcome.CRASHED)] and of(Kill, actions) == [Kill(ex)]


def test_a_replaced_environment_stops_its_executors_and_their_tasks_wait_for_it() -> None:
    s = Checked(2)
    spawns = of(Spawn, started(s, qt(1), qt(2)))
    busy, starting = spawns[0].ex_id, spawns[1].ex_id
    s.handle(ExecutorReady(busy), 0.0)
    s.handle(Turn(), 0.0)
    s.handle(TaskQueued(qt(3)), 0.0)
    actions = s.handle(DistReplaced("d"), 0.0)
    assert sorted(a.ex_id for a in of(Kill, actions)) == sorted([busy, starting])
    assert reports(actions) == [] and s.busy == 0 and s.waiting() == 3  # nothing lost
    assert s.handle(Turn(), 0.5) == []  # they wait for the new tree
    s.handle(DistReady("d"), 0.0)
    assert len(of(Spawn, s.handle(Turn(), 2.0))) == 2  # fresh executors


def test_a_main_with_another_environment_gets_the_next_free_slots_until_both_hold_half() -> None:
    s = Checked(4)
    s.handle(DistReady("d"), 0.0)
    for i in range(100):
        s.handle(TaskQueued(qt(i, peer=b"A")), 0.0)
    for sp in of(Spawn, s.handle(Turn(), 0.0)):
        s.handle(ExecutorReady(sp.ex_id), 0.0)
    s.handle(Turn(), 0.0)
    assert s.held() == {b"A": 4}
    assert all(len(ex.runs) == 2 for ex in s.executors.values())  # each holds its next task
    for i in range(10):
        s.handle(TaskQueued(qt(1000 + i, peer=b"B", dist="e")), 0.0)
    s.handle(DistReady("e"), 0.0)
    now = 1.0
    seen = []
    for _ in range(12):  # A's tasks finish one at a time; B's executors start and run
        now += 0.1
        for ex in list(s.executors.values()):
            head = ex.runs[0] if ex.runs else None
            if head is not None and ex.ready and head.started < now - 0.05:
                s.handle(TaskDone(ex.ex_id, head.run_id, Outcome.OK, {}, []), now)
                break
        for sp in of(Spawn, s.handle(Turn(), now)):
            s.handle(ExecutorReady(sp.ex_id), 0.0)
        s.handle(Turn(), now)
        seen.append(s.held())
    assert {b"A": 2, b"B": 2} in seen  # B got slots while A still had 90 queued
    assert all(h.get(b"B", 0) <= 2 for h in seen)  # and no more than its share
    assert s.queues.count(b"A") > 80


def test_an_executor_idle_for_too_long_stops() -> None:
    s = Checked(1, idle_after=60.0)
    ex = of(Spawn, started(s, qt(1)))[0].ex_id
    s.handle(ExecutorReady(ex), 0.0)
    s.handle(Turn(), 0.0)
    s.handle(TaskDone(ex, s.running(ex).run_id, Outcome.OK, {}, []), 10.0)
    assert s.handle(Tick(), 69.0) == []
    assert of(Kill, s.handle(Tick(), 71.0)) == [Kill(ex)] and s.executors == {}


def test_a_main_past_its_queued_bytes_gets_its_tasks_deferred() -> None:
    s = Checked(1, max_queued=3000)
    assert s.handle(TaskQueued(qt(1, size=2000)), 0.0) == []  # the first is always taken
    assert s.handle(TaskQueued(qt(2, size=900)), 0.0) == []
    assert reports(s.handle(TaskQueued(qt(3, size=200)), 0.0)) == [(3, Outcome.DEFERRED)]
    # another Main has its own allowance
    assert s.handle(TaskQueued(qt(4, size=10, peer=b"B")), 0.0) == []
    s.handle(CancelAsked(b"A", 1), 0.0)
    assert s.handle(TaskQueued(qt(3, size=200)), 0.0) == []  # room again


def _all_running(s: Checked, *tasks: QueuedTask) -> list[int]:
    """Start ``tasks``, make every executor ready, and return the executor ids."""
    spawns = [a.ex_id for a in of(Spawn, started(s, *tasks))]
    for ex in spawns:
        s.handle(ExecutorReady(ex), 0.0)
    s.handle(Turn(), 0.0)
    return spawns


def test_fewer_slots_let_running_tasks_finish_and_start_no_new_ones() -> None:
    s = Checked(4)
    executors = _all_running(s, *[qt(i) for i in range(10)])
    assert s.busy == 4 and all(len(s.executors[ex].runs) == 2 for ex in executors)
    actions = s.handle(Resize(1), 0.0)
    skips = of(Skip, actions)
    assert len(skips) == 4 and reports(actions) == []  # the next tasks are asked back
    for skip in skips:
        s.handle(TaskSkipped(skip.ex_id, skip.run_id), 1.0)
    assert s.waiting() == 6 and s.busy == 4  # the four running tasks go on
    for ex in executors[:3]:
        s.handle(TaskDone(ex, s.running(ex).run_id, Outcome.OK, {}, []), 2.0)
        # Nothing starts on a freed executor (the one still running may get its next task).
        assert not set(sent(s.handle(Turn(), 2.0))) & set(executors[:3])
    s.handle(TaskDone(executors[3], s.running(executors[3]).run_id, Outcome.OK, {}, []), 3.0)
    s.handle(Turn(), 3.0)
    assert s.busy == 1  # one slot now
    s.handle(Resize(4), 0.0)
    s.handle(Turn(), 4.0)
    assert s.busy == 4


def test_a_task_asked_back_that_had_started_is_reported_as_it_ends() -> None:
    s = Checked(1)
    (ex,) = _all_running(s, qt(1), qt(2))
    assert len(of(Skip, s.handle(HandBack(), 0.0))) == 1
    # The first task ended and the executor started the second before the skip arrived (so
    # it sends no "skipped"): the second runs to its end and is reported once, as it ended.
    assert reports(s.handle(TaskDone(ex, s.running(ex).run_id, Outcome.OK, {}, []), 1.0)) == [
        (1, Outcome.OK)]
    assert s.running(ex).task.task_id == 2 and s.handle(Tick(), 5.0) == []  # (not stopped)
    assert reports(s.handle(TaskDone(ex, s.running(ex).run_id, Outcome.OK, {}, []), 6.0)) == [
        (2, Outcome.OK)]


def test_hand_back_defers_queued_and_not_started_tasks_and_vacate_stops_running_ones() -> None:
    s = Checked(2)
    executors = _all_running(s, *[qt(i) for i in range(6)])
    actions = s.handle(OwnerStateChanged("paused"), 0.0)
    assert sorted(reports(actions)) == [(4, Outcome.DEFERRED), (5, Outcome.DEFERRED)]
    for skip in of(Skip, actions):
        out = reports(s.handle(TaskSkipped(skip.ex_id, skip.run_id), 1.0))
        assert out[0][1] is Outcome.DEFERRED
    actions = s.handle(HandBack(vacate=True), 0.0)
    assert sorted(reports(actions)) == [(0, Outcome.DEFERRED), (1, Outcome.DEFERRED)]
    assert sorted(a.ex_id for a in of(Kill, actions)) == sorted(executors)
    assert s.busy == 0 and not s.running_any()


def test_a_main_never_holds_more_slots_than_its_quota() -> None:
    s = Checked(4)
    s.handle(QuotaSet(b"A", 1, 1.0), 0.0)
    assert s.offered(b"A") == 1 and s.offered(b"B") == 4
    _all_running(s, *[qt(i, peer=b"A") for i in range(6)])
    assert s.held() == {b"A": 1}  # three slots stay free rather than pass the quota
    for i in range(6):
        s.handle(TaskQueued(qt(100 + i, peer=b"B")), 0.0)
    s.handle(Turn(), 1.0)
    assert s.held() == {b"A": 1, b"B": 3}


def test_priorities_share_slots_between_mains_that_want_more() -> None:
    s = Checked(4)
    s.handle(QuotaSet(b"A", None, 3.0), 0.0)
    s.handle(DistReady("d"), 0.0)
    for i in range(20):
        s.handle(TaskQueued(qt(i, peer=b"A")), 0.0)
        s.handle(TaskQueued(qt(100 + i, peer=b"B")), 0.0)
    s.handle(Turn(), 0.0)
    assert s.held() == {b"A": 3, b"B": 1}


def test_a_task_needing_more_threads_than_now_offered_goes_back_to_its_main() -> None:
    s = Checked(4)
    s.handle(Resize(2), 0.0)
    # its Main's view
    assert reports(s.handle(TaskQueued(qt(1, threads=3)), 0.0)) == [(1, Outcome.DEFERRED)]
    # never offered
    assert reports(s.handle(TaskQueued(qt(2, threads=5)), 0.0))[0][1] is Outcome.ERROR


def _skipped(s: Checked, actions: list[Action], now: float = 1.0) -> list[Action]:
    """The executors confirm every skip in ``actions``."""
    out: list[Action] = []
    for skip in of(Skip, actions):
        out += s.handle(TaskSkipped(skip.ex_id, skip.run_id), now)
    return out


def test_tasks_asked_back_that_no_longer_fit_go_back_to_their_main() -> None:
    s = Checked(8)
    _all_running(s, *[qt(i, threads=4) for i in range(4)])  # two running, two handed next
    actions = s.handle(Resize(2), 0.0)
    assert reports(_skipped(s, actions)) == [(2, Outcome.DEFERRED), (3, Outcome.DEFERRED)]
    assert s.waiting() == 0  # none stuck in the queue where it can never start


def test_tasks_asked_back_while_paused_go_back_to_their_main() -> None:
    s = Checked(2)
    _all_running(s, *[qt(i) for i in range(4)])
    actions = s.handle(Resize(1), 0.0)
    s.handle(OwnerStateChanged("paused"), 0.0)
    assert sorted(reports(_skipped(s, actions))) == [(2, Outcome.DEFERRED),
                                                    (3, Outcome.DEFERRED)]
    assert s.waiting() == 0


def test_vacate_reports_a_cancelled_running_task_as_cancelled() -> None:
    s = Checked(1)
    (ex,) = _all_running(s, qt(1), qt(2))
    s.handle(CancelAsked(b"A", 2), 0.5)  # handed next: asked to skip it
    # It started before the skip:
    s.handle(TaskDone(ex, s.running(ex).run_id, Outcome.OK, {}, []), 1.0)
    assert reports(s.handle(HandBack(vacate=True), 0.0)) == [(2, Outcome.CANCELLED)]


def test_a_lowered_quota_asks_tasks_back_and_lets_the_slots_drain() -> None:
    s = Checked(4)
    _all_running(s, *[qt(i, peer=b"A") for i in range(12)])
    assert s.held() == {b"A": 4}
    actions = s.handle(QuotaSet(b"A", 1, 1.0), 0.0)
    assert len(of(Skip, actions)) == 4
    _skipped(s, actions)
    for ex in list(s.executors):
        run = s.running(ex)
        if run is not None:
            s.handle(TaskDone(ex, run.run_id, Outcome.OK, {}, []), 2.0)
        s.handle(Turn(), 2.0)
    assert s.held() == {b"A": 1} and s.busy == 1
    assert reports(s.handle(TaskQueued(qt(50, peer=b"A", threads=2)), 0.0)) == [
        (50, Outcome.DEFERRED)]


def test_an_environments_first_call_starts_idle_executors_for_the_next_ones() -> None:
    s = Checked(4, idle_after=60.0)
    s.handle(DistReady("d"), 0.0)
    s.handle(DistReady("e"), 0.0)
    spawns = of(Spawn, started(s, qt(1)))
    assert [sp.key.dist for sp in spawns] == ["d"] * 4  # one runs it, three wait idle
    # A second environment's first call takes the room of an idle one (nothing is left).
    s.handle(TaskQueued(qt(2, peer=b"B", dist="e")), 0.0)
    actions = s.handle(Turn(), 1.0)
    assert [sp.key.dist for sp in of(Spawn, actions)] == ["e"] and len(of(Kill, actions)) == 1
    # The idle ones stop after idle_after, the busy ones stay.
    s.handle(Tick(), 100.0)
    assert sorted(e.key.dist for e in s.executors.values()) == ["d", "e"]


def test_idle_executors_started_ahead_stay_within_the_mains_quota() -> None:
    s = Checked(4)
    s.handle(QuotaSet(b"A", 2, 1.0), 0.0)
    s.handle(DistReady("d"), 0.0)
    assert len(of(Spawn, started(s, qt(1)))) == 2

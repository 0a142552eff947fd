"""The worker's slot and executor machine, driven with events: no sockets, no processes, no
clock."""

from __future__ import annotations

from typing import Any

from distrib.wire._messages import Outcome
from distrib.worker._slots import (
    PREFETCH,
    SKIP_GRACE,
    Action,
    EnvKey,
    Kill,
    Report,
    Send,
    Skip,
    Slots,
    Spawn,
)
from distrib.worker._state import QueuedTask

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


def started(machine: Slots, *tasks: QueuedTask, now: float = 0.0) -> list[Action]:
    """Submit tasks of a ready environment and schedule them."""
    machine.dist_ready("d")
    for t in tasks:
        assert machine.submit(t) == []
    return machine.schedule(now)


def test_tasks_wait_for_their_environment_then_start_one_executor_per_slot() -> None:
    s = Slots(2)
    for i in (1, 2, 3):
        s.submit(qt(i))
    assert s.schedule(0.0) == []  # environment not ready: nothing starts
    s.dist_ready("d")
    actions = s.schedule(0.0)
    spawns = of(Spawn, actions)
    assert [a.key for a in spawns] == [EnvKey("d", 1)] * 2
    assert of(Send, actions) == []  # the executors have not imported the environment yet
    assert s.busy == 2 and s.waiting() == 1
    s.executor_ready(spawns[0].ex_id, 0.0)
    assert sent(s.schedule(0.0)) == {spawns[0].ex_id: [1, 3]}  # its task, and the next one


def test_a_finished_task_is_reported_and_its_executor_reused() -> None:
    s = Slots(1)
    ex = of(Spawn, started(s, qt(1), qt(2)))[0].ex_id
    s.executor_ready(ex, 0.0)
    assert sent(s.schedule(0.0)) == {ex: [1, 2]}
    actions = s.task_done(ex, s.running(ex).key, Outcome.OK, {}, [b"r"], 1.0)
    assert reports(actions) == [(1, Outcome.OK)] and of(Report, actions)[0].frames == [b"r"]
    assert s.running(ex).task.task_id == 2 and s.busy == 1
    s.task_done(ex, s.running(ex).key, Outcome.OK, {}, [], 2.0)
    assert s.busy == 0 and s.counters["tasks_done"] == 2 and s.counters["executors_started"] == 1


def test_tiny_tasks_are_prefetched_deeper_than_slow_ones() -> None:
    s = Slots(1)
    ex = of(Spawn, started(s, *[qt(i) for i in range(20)]))[0].ex_id
    s.executor_ready(ex, 0.0)
    assert len(sent(s.schedule(0.0))[ex]) == 2  # unknown run time: one behind the running one
    now = 0.0
    for _ in range(10):  # a run of tasks finishing in a millisecond each
        now += 0.001
        s.task_done(ex, s.running(ex).key, Outcome.OK, {}, [], now)
        s.schedule(now)
    assert len(s.executors[ex].runs) == PREFETCH + 1


def test_large_calls_are_not_prefetched() -> None:
    s = Slots(1)
    ex = of(Spawn, started(s, qt(1), qt(2, size=1 << 20)))[0].ex_id
    s.executor_ready(ex, 0.0)
    assert sent(s.schedule(0.0)) == {ex: [1]}


def test_a_crash_reports_the_running_task_and_requeues_the_prefetched_one() -> None:
    s = Slots(1)
    ex = of(Spawn, started(s, qt(1), qt(2)))[0].ex_id
    s.executor_ready(ex, 0.0)
    s.schedule(0.0)
    actions = s.executor_died(ex, CRASH)
    assert reports(actions) == [(1, Outcome.CRASHED)]
    assert of(Report, actions)[0].info == CRASH
    assert of(Kill, actions) == [Kill(ex)]
    assert s.busy == 0 and s.counters["executors_crashed"] == 1 and s.waiting() == 1
    again = s.schedule(1.0)
    assert len(of(Spawn, again)) == 1  # a fresh executor for the requeued task


def test_an_environment_that_fails_to_import_fails_its_tasks_and_no_others() -> None:
    s = Slots(2)
    s.dist_ready("other")
    ex = of(Spawn, started(s, qt(1), qt(2), qt(3)))[0].ex_id
    s.submit(qt(9, dist="other"))
    error = {"type": "builtins.ImportError", "message": "no", "traceback": ""}
    actions = s.env_error(ex, error, [b"e"])
    assert sorted(reports(actions)) == [(1, Outcome.ENV_ERROR), (3, Outcome.ENV_ERROR)]
    assert s.queues.count(b"A") == 1  # task 9 of the other environment waits on
    assert reports(s.submit(qt(4))) == [(4, Outcome.ENV_ERROR)]  # this Main's: fails at once
    assert [a.key.dist for a in of(Spawn, s.schedule(1.0))] == ["other"]  # on the freed slot
    running = {r.task.task_id for e in s.executors.values() for r in e.runs}
    assert running == {2, 9} and s.waiting() == 0
    assert s.submit(qt(5, peer=b"B")) == [] and s.waiting() == 1  # another Main starts over


def test_cancel_withdraws_a_queued_task_skips_a_handed_one_and_stops_a_running_one() -> None:
    s = Slots(1)
    ex = of(Spawn, started(s, qt(1), qt(2), qt(3)))[0].ex_id
    s.executor_ready(ex, 0.0)
    s.schedule(0.0)  # task 1 runs, task 2 waits in the executor, task 3 is queued
    assert reports(s.cancel(b"A", 3, 0.0)) == [(3, Outcome.CANCELLED)]
    skip = s.cancel(b"A", 2, 0.0)
    assert of(Skip, skip) and reports(skip) == []
    assert reports(s.task_skipped(ex, of(Skip, skip)[0].key, 0.1)) == [(2, Outcome.CANCELLED)]
    stop = s.cancel(b"A", 1, 0.2)
    assert of(Kill, stop) == [Kill(ex)] and reports(stop) == [(1, Outcome.CANCELLED)]
    assert s.busy == 0 and s.executors == {}
    assert s.cancel(b"A", 99, 0.3) == []  # unknown: nothing to do


def test_a_withdrawn_task_that_started_before_its_skip_is_stopped_after_a_grace() -> None:
    s = Slots(1)
    ex = of(Spawn, started(s, qt(1), qt(2)))[0].ex_id
    s.executor_ready(ex, 0.0)
    s.schedule(0.0)
    s.cancel(b"A", 2, 0.0)
    s.task_done(ex, s.running(ex).key, Outcome.OK, {}, [], 1.0)  # task 2 is now the head
    assert s.tick(1.0 + SKIP_GRACE / 2) == []
    actions = s.tick(1.0 + SKIP_GRACE * 2)
    assert of(Kill, actions) == [Kill(ex)] and reports(actions) == [(2, Outcome.CANCELLED)]


def test_a_task_past_its_timeout_is_stopped_and_the_next_requeued() -> None:
    s = Slots(1)
    ex = of(Spawn, started(s, qt(1, timeout=5.0), qt(2), now=10.0))[0].ex_id
    s.executor_ready(ex, 0.0)
    s.schedule(10.0)
    assert s.tick(14.0) == []
    actions = s.tick(15.5)
    assert reports(actions) == [(1, Outcome.TIMEOUT)] and of(Kill, actions) == [Kill(ex)]
    assert s.waiting() == 1


def test_a_main_that_leaves_is_forgotten_and_others_go_on() -> None:
    s = Slots(2)
    s.dist_ready("d")
    for t in (qt(1), qt(2, peer=b"B"), qt(3), qt(4)):
        s.submit(t)
    spawns = of(Spawn, s.schedule(0.0))
    for sp in spawns:
        s.executor_ready(sp.ex_id, 0.0)
    s.schedule(0.0)
    actions, queued, running = s.drop_main(b"A")
    assert reports(actions) == []  # nobody to report to
    # (the one handed to an executor and not started is asked back, and counted as queued)
    assert running == 1 and queued + running == 3 and len(of(Skip, actions)) <= 1
    assert s.waiting(b"A") == 0 or all(
        r.withdrawn is not None for e in s.executors.values() for r in e.runs
        if r.task.peer == b"A")
    assert any(r.task.peer == b"B" for e in s.executors.values() for r in e.runs)


def test_a_task_needing_more_threads_than_the_worker_has_fails_at_once() -> None:
    s = Slots(2)
    actions = s.submit(qt(1, threads=3))
    assert reports(actions) == [(1, Outcome.ERROR)]
    assert "offers 2" in of(Report, actions)[0].info["message"]


def test_a_new_environment_retires_an_idle_executor_of_another() -> None:
    s = Slots(1)
    s.dist_ready("e")
    ex = of(Spawn, started(s, qt(1)))[0].ex_id
    s.executor_ready(ex, 0.0)
    s.schedule(0.0)
    s.task_done(ex, s.running(ex).key, Outcome.OK, {}, [], 1.0)
    s.submit(qt(2, dist="e"))
    actions = s.schedule(1.0)
    assert of(Kill, actions) == [Kill(ex)] and [a.key.dist for a in of(Spawn, actions)] == ["e"]


def test_an_outcome_for_a_task_not_running_is_treated_as_a_broken_executor() -> None:
    s = Slots(1)
    ex = of(Spawn, started(s, qt(1)))[0].ex_id
    s.executor_ready(ex, 0.0)
    s.schedule(0.0)
    actions = s.task_done(ex, 12345, Outcome.OK, {}, [], 1.0)
    assert reports(actions) == [(1, Outcome.CRASHED)] and of(Kill, actions) == [Kill(ex)]


def test_a_replaced_environment_stops_its_executors_and_their_tasks_wait_for_it() -> None:
    s = Slots(2)
    spawns = of(Spawn, started(s, qt(1), qt(2)))
    busy, starting = spawns[0].ex_id, spawns[1].ex_id
    s.executor_ready(busy, 0.0)
    s.schedule(0.0)
    s.submit(qt(3))
    actions = s.env_replaced("d")
    assert sorted(a.ex_id for a in of(Kill, actions)) == sorted([busy, starting])
    assert reports(actions) == [] and s.busy == 0 and s.waiting() == 3  # nothing lost
    assert s.schedule(0.5) == []  # they wait for the new tree
    s.dist_ready("d")
    assert len(of(Spawn, s.schedule(2.0))) == 2  # fresh executors


def test_a_main_with_another_environment_gets_the_next_free_slots_until_both_hold_half() -> None:
    s = Slots(4)
    s.dist_ready("d")
    for i in range(100):
        s.submit(qt(i, peer=b"A"))
    for sp in of(Spawn, s.schedule(0.0)):
        s.executor_ready(sp.ex_id, 0.0)
    s.schedule(0.0)
    assert s.held() == {b"A": 4}
    assert all(len(ex.runs) == 2 for ex in s.executors.values())  # each holds its next task
    for i in range(10):
        s.submit(qt(1000 + i, peer=b"B", dist="e"))
    s.dist_ready("e")
    now = 1.0
    seen = []
    for _ in range(12):  # A's tasks finish one at a time; B's executors start and run
        now += 0.1
        for ex in list(s.executors.values()):
            head = ex.runs[0] if ex.runs else None
            if head is not None and ex.ready and head.started < now - 0.05:
                s.task_done(ex.ex_id, head.key, Outcome.OK, {}, [], now)
                break
        for sp in of(Spawn, s.schedule(now)):
            s.executor_ready(sp.ex_id, 0.0)
        s.schedule(now)
        seen.append(s.held())
    assert {b"A": 2, b"B": 2} in seen  # B got slots while A still had 90 queued
    assert all(h.get(b"B", 0) <= 2 for h in seen)  # and no more than its share
    assert s.queues.count(b"A") > 80


def test_an_executor_idle_for_too_long_stops() -> None:
    s = Slots(1, idle_after=60.0)
    ex = of(Spawn, started(s, qt(1)))[0].ex_id
    s.executor_ready(ex, 0.0)
    s.schedule(0.0)
    s.task_done(ex, s.running(ex).key, Outcome.OK, {}, [], 10.0)
    assert s.tick(69.0) == []
    assert of(Kill, s.tick(71.0)) == [Kill(ex)] and s.executors == {}


def test_a_main_past_its_queued_bytes_gets_its_tasks_deferred() -> None:
    s = Slots(1, max_queued=3000)
    assert s.submit(qt(1, size=2000)) == []  # the first is always taken
    assert s.submit(qt(2, size=900)) == []
    assert reports(s.submit(qt(3, size=200))) == [(3, Outcome.DEFERRED)]
    assert s.submit(qt(4, size=10, peer=b"B")) == []  # another Main has its own allowance
    s.cancel(b"A", 1, 0.0)
    assert s.submit(qt(3, size=200)) == []  # room again


def _all_running(s: Slots, *tasks: QueuedTask) -> list[int]:
    """Start ``tasks``, make every executor ready, and return the executor ids."""
    spawns = [a.ex_id for a in of(Spawn, started(s, *tasks))]
    for ex in spawns:
        s.executor_ready(ex, 0.0)
    s.schedule(0.0)
    return spawns


def test_fewer_slots_let_running_tasks_finish_and_start_no_new_ones() -> None:
    s = Slots(4)
    executors = _all_running(s, *[qt(i) for i in range(10)])
    assert s.busy == 4 and all(len(s.executors[ex].runs) == 2 for ex in executors)
    actions = s.resize(1)
    skips = of(Skip, actions)
    assert len(skips) == 4 and reports(actions) == []  # the next tasks are asked back
    for skip in skips:
        s.task_skipped(skip.ex_id, skip.key, 1.0)
    assert s.waiting() == 6 and s.busy == 4  # the four running tasks go on
    for ex in executors[:3]:
        s.task_done(ex, s.running(ex).key, Outcome.OK, {}, [], 2.0)
        # Nothing starts on a freed executor (the one still running may get its next task).
        assert not set(sent(s.schedule(2.0))) & set(executors[:3])
    s.task_done(executors[3], s.running(executors[3]).key, Outcome.OK, {}, [], 3.0)
    s.schedule(3.0)
    assert s.busy == 1  # one slot now
    s.resize(4)
    s.schedule(4.0)
    assert s.busy == 4


def test_a_task_asked_back_that_had_started_is_reported_as_it_ends() -> None:
    s = Slots(1)
    (ex,) = _all_running(s, qt(1), qt(2))
    assert len(of(Skip, s.hand_back())) == 1
    # The first task ended and the executor started the second before the skip arrived (so
    # it sends no "skipped"): the second runs to its end and is reported once, as it ended.
    assert reports(s.task_done(ex, s.running(ex).key, Outcome.OK, {}, [], 1.0)) == [
        (1, Outcome.OK)]
    assert s.running(ex).task.task_id == 2 and s.tick(5.0) == []  # (not stopped)
    assert reports(s.task_done(ex, s.running(ex).key, Outcome.OK, {}, [], 6.0)) == [
        (2, Outcome.OK)]


def test_hand_back_defers_queued_and_not_started_tasks_and_vacate_stops_running_ones() -> None:
    s = Slots(2)
    executors = _all_running(s, *[qt(i) for i in range(6)])
    s.paused = True
    actions = s.hand_back()
    assert sorted(reports(actions)) == [(4, Outcome.DEFERRED), (5, Outcome.DEFERRED)]
    for skip in of(Skip, actions):
        assert reports(s.task_skipped(skip.ex_id, skip.key, 1.0))[0][1] is Outcome.DEFERRED
    actions = s.hand_back(vacate=True)
    assert sorted(reports(actions)) == [(0, Outcome.DEFERRED), (1, Outcome.DEFERRED)]
    assert sorted(a.ex_id for a in of(Kill, actions)) == sorted(executors)
    assert s.busy == 0 and not s.running_any()


def test_a_main_never_holds_more_slots_than_its_quota() -> None:
    s = Slots(4)
    s.set_quota(b"A", 1, 1.0)
    assert s.offered(b"A") == 1 and s.offered(b"B") == 4
    _all_running(s, *[qt(i, peer=b"A") for i in range(6)])
    assert s.held() == {b"A": 1}  # three slots stay free rather than pass the quota
    for i in range(6):
        s.submit(qt(100 + i, peer=b"B"))
    s.schedule(1.0)
    assert s.held() == {b"A": 1, b"B": 3}


def test_priorities_share_slots_between_mains_that_want_more() -> None:
    s = Slots(4)
    s.set_quota(b"A", None, 3.0)
    s.dist_ready("d")
    for i in range(20):
        s.submit(qt(i, peer=b"A"))
        s.submit(qt(100 + i, peer=b"B"))
    s.schedule(0.0)
    assert s.held() == {b"A": 3, b"B": 1}


def test_a_task_needing_more_threads_than_now_offered_goes_back_to_its_main() -> None:
    s = Slots(4)
    s.resize(2)
    assert reports(s.submit(qt(1, threads=3))) == [(1, Outcome.DEFERRED)]  # its Main's view
    assert reports(s.submit(qt(2, threads=5)))[0][1] is Outcome.ERROR  # never offered


def _skipped(s: Slots, actions: list[Action], now: float = 1.0) -> list[Action]:
    """The executors confirm every skip in ``actions``."""
    out: list[Action] = []
    for skip in of(Skip, actions):
        out += s.task_skipped(skip.ex_id, skip.key, now)
    return out


def test_tasks_asked_back_that_no_longer_fit_go_back_to_their_main() -> None:
    s = Slots(8)
    _all_running(s, *[qt(i, threads=4) for i in range(4)])  # two running, two handed next
    actions = s.resize(2)
    assert reports(_skipped(s, actions)) == [(2, Outcome.DEFERRED), (3, Outcome.DEFERRED)]
    assert s.waiting() == 0  # none stuck in the queue where it can never start


def test_tasks_asked_back_while_paused_go_back_to_their_main() -> None:
    s = Slots(2)
    _all_running(s, *[qt(i) for i in range(4)])
    actions = s.resize(1)
    s.paused = True
    s.hand_back()
    assert sorted(reports(_skipped(s, actions))) == [(2, Outcome.DEFERRED),
                                                    (3, Outcome.DEFERRED)]
    assert s.waiting() == 0


def test_vacate_reports_a_cancelled_running_task_as_cancelled() -> None:
    s = Slots(1)
    (ex,) = _all_running(s, qt(1), qt(2))
    s.cancel(b"A", 2, 0.5)  # handed next: asked to skip it
    s.task_done(ex, s.running(ex).key, Outcome.OK, {}, [], 1.0)  # it started before the skip
    assert reports(s.hand_back(vacate=True)) == [(2, Outcome.CANCELLED)]


def test_a_lowered_quota_asks_tasks_back_and_lets_the_slots_drain() -> None:
    s = Slots(4)
    _all_running(s, *[qt(i, peer=b"A") for i in range(12)])
    assert s.held() == {b"A": 4}
    actions = s.set_quota(b"A", 1, 1.0)
    assert len(of(Skip, actions)) == 4
    _skipped(s, actions)
    for ex in list(s.executors):
        run = s.running(ex)
        if run is not None:
            s.task_done(ex, run.key, Outcome.OK, {}, [], 2.0)
        s.schedule(2.0)
    assert s.held() == {b"A": 1} and s.busy == 1
    assert reports(s.submit(qt(50, peer=b"A", threads=2))) == [(50, Outcome.DEFERRED)]


def test_an_environments_first_call_starts_idle_executors_for_the_next_ones() -> None:
    s = Slots(4, idle_after=60.0)
    s.dist_ready("d")
    s.dist_ready("e")
    spawns = of(Spawn, started(s, qt(1)))
    assert [sp.key.dist for sp in spawns] == ["d"] * 4  # one runs it, three wait idle
    # A second environment's first call takes the room of an idle one (nothing is left).
    s.submit(qt(2, peer=b"B", dist="e"))
    actions = s.schedule(1.0)
    assert [sp.key.dist for sp in of(Spawn, actions)] == ["e"] and len(of(Kill, actions)) == 1
    # The idle ones stop after idle_after, the busy ones stay.
    s.tick(100.0)
    assert sorted(e.key.dist for e in s.executors.values()) == ["d", "e"]


def test_idle_executors_started_ahead_stay_within_the_mains_quota() -> None:
    s = Slots(4)
    s.set_quota(b"A", 2, 1.0)
    s.dist_ready("d")
    assert len(of(Spawn, started(s, qt(1)))) == 2

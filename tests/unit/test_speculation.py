"""Backup copies of stragglers: the policy (``main/_speculation``), the scheduler's copies,
and the option's checks."""

from __future__ import annotations

import pickle

import pytest

from distrib import ConfigError, distributed
from distrib._api import TaskOptions
from distrib.main._scheduler import Scheduler
from distrib.main._tracked import Task, WorkerView
from distrib.main._speculation import Durations, Policy, decisive, stragglers
from distrib.wire._messages import Outcome


def measured(name: str, *runs: float) -> Durations:
    durations = Durations()
    for seconds in runs:
        durations.add(name, seconds)
    return durations


def test_a_task_straggles_past_a_multiple_of_its_functions_median_and_the_floor() -> None:
    durations = measured("f", 0.4, 0.5, 0.6)
    policy = Policy(multiple=2.0, floor=1.0, min_samples=3)
    running = [("early", "f", 9.5), ("late", "f", 8.5), ("later", "f", 7.0)]
    # median 0.5: the limit is max(1.0, 2 x 0.5) = 1.0 s; the latest comes first
    assert stragglers(10.0, running, durations, policy) == ["later", "late"]
    slow = measured("f", 1.2, 1.2, 1.2)  # the multiple wins over the floor: 2.4 s
    assert stragglers(10.0, running, slow, policy) == ["later"]


def test_no_task_is_judged_before_its_function_has_enough_measured_runs() -> None:
    durations = measured("f", 0.1, 0.1)
    assert stragglers(100.0, [(1, "f", 0.0), (2, "g", 0.0)], durations, Policy()) == []
    durations.add("f", 0.1)
    assert stragglers(100.0, [(1, "f", 0.0), (2, "g", 0.0)], durations, Policy()) == [1]


def test_durations_keep_a_window_of_recent_runs() -> None:
    durations = Durations(window=3)
    for seconds in (10.0, 10.0, 1.0, 1.0, 1.0):
        durations.add("f", seconds)
    assert durations.count("f") == 3 and durations.median("f") == 1.0
    assert durations.median("g") is None and durations.any()


def test_which_outcomes_decide_a_copied_task() -> None:
    assert decisive(Outcome.OK, False) and decisive(Outcome.TIMEOUT, False)
    assert decisive(Outcome.ERROR, False) and not decisive(Outcome.ERROR, True)
    for status in (Outcome.CRASHED, Outcome.DEFERRED, Outcome.CANCELLED, Outcome.ENV_ERROR):
        assert not decisive(status, False)


def task(task_id: int, threads: int = 1) -> Task:
    return Task(task_id, "f", [b""], ("*",), threads, 3, None, speculative=True)


def worker(link: str, slots: int = 2) -> WorkerView:
    return WorkerView(link, link, "linux-x86_64", "3.11", slots)


def placed(s: Scheduler, *tasks: Task) -> dict[str, list[int]]:
    for t in tasks:
        s.add(t)
    return {link: [t.task_id for t in ts] for link, ts in s.assign().items()}


def test_a_copy_goes_to_an_idle_worker_once_and_the_first_outcome_drops_the_other() -> None:
    s = Scheduler("3.11")
    s.join(worker("a"))
    assert placed(s, task(1)) == {"a": [1]}
    t = s.workers["a"].inflight[1]
    assert s.start_copy(t) is None  # no other worker
    s.join(worker("b"))
    assert s.has_idle_slots()
    assert [task for task, _ in s.running_speculative()] == [t]
    assert s.start_copy(t) == "b"
    assert s.start_copy(t) is None and list(s.running_speculative()) == []  # one copy at most
    assert s.workers["b"].inflight_slots == 1 and len(s.all_tasks()) == 1
    # b ends first: a's copy is forgotten (its slot free) and is to be cancelled
    assert s.finish("b", 1) is t
    assert s.drop_copies(1, keep="b") == ["a"]
    assert s.workers["a"].inflight == {} and s.workers["a"].inflight_slots == 0
    assert s.finish("a", 1) is None  # its late report is nobody's
    assert s.copies == {}


def test_a_copy_that_crashes_or_whose_worker_is_lost_leaves_the_other_running() -> None:
    s = Scheduler("3.11")
    s.join(worker("a"))
    s.join(worker("b"))
    s.join(worker("c"))
    placed(s, task(1), task(2))
    first, second = (s.all_tasks())
    for t in (first, second):
        assert s.start_copy(t) is not None
    # a crash of one copy: the other goes on, nothing requeued
    link = first.link
    assert link is not None
    other = next(iter(s.copies[first.task_id] - {link}))
    assert s.finish(other, first.task_id) is first
    assert s.copy_ended(other, first) and first.link == link and first.task_id not in s.copies
    assert not any(s.pending.values())
    # the worker of one copy is lost: no try counted, no requeue, the other copy holds it
    keep_link = second.link
    assert keep_link is not None
    lost = next(iter(s.copies[second.task_id] - {keep_link}))
    assert s.leave(lost) == [] and second.attempts == 0
    assert second not in [t for q in s.pending.values() for t in q]
    assert second.link == keep_link
    assert s.workers[keep_link].inflight[second.task_id] is second


def test_the_option_travels_with_the_function_and_a_wrong_combination_is_refused() -> None:
    @distributed(speculative=True)
    def f(x: int) -> int:
        return x

    assert f.options.speculative
    assert pickle.loads(pickle.dumps(f.options)) == f.options
    with pytest.raises(ConfigError, match=r"speculative=True.*retries=0"):
        distributed(speculative=True, retries=0)
    with pytest.raises(ConfigError, match=r"distributed\(speculative=...\): expected True or "
                                          "False"):
        distributed(speculative="yes")  # type: ignore[call-overload]
    assert not TaskOptions().speculative


def test_a_task_waits_since_it_started_or_since_its_worker_last_reported() -> None:
    s = Scheduler("3.11", extra_depth=2)
    s.join(worker("a", slots=2))
    placed(s, *(task(i) for i in range(1, 5)))
    for t in s.workers["a"].inflight.values():
        t.sent = 1.0
    s.progressed("a", 1.0)  # sent: the first two start at once, two are queued
    assert [since for _, since in s.running_speculative()] == [1.0, 1.0, 1.0, 1.0]
    assert s.finish("a", 1) is not None
    s.progressed("a", 5.0)  # an outcome: the third starts, the fourth waits since then
    assert [(t.task_id, since) for t, since in s.running_speculative()] == [
        (2, 1.0), (3, 5.0), (4, 5.0)]


def test_an_executor_passes_the_option_to_its_calls() -> None:
    from distrib import Executor

    def f(x: int) -> int:
        return x

    pool = Executor(speculative=True)
    try:
        assert pool._decorate(f).options.speculative
    finally:
        pool.shutdown(wait=False)
    with pytest.raises(ConfigError, match="retries=0"):
        Executor(speculative=True, retries=0)


def test_a_task_asked_back_from_a_worker_that_stopped_still_gets_a_copy() -> None:
    # A stopped worker answers no Revoke: its queue is copied like any straggler's, and a
    # late answer giving the task back leaves the copy to run alone (not placed a third time).
    s = Scheduler("3.11")
    s.join(worker("a", slots=1))
    placed(s, task(1), task(2))
    queued = s.workers["a"].inflight[2]
    s.revoke("a", [2])
    s.join(worker("b", slots=1))
    assert queued in [t for t, _ in s.running_speculative()]
    assert s.start_copy(queued) == "b"
    assert s.take_back("a", [2], []) == []
    assert queued.link == "b" and 2 not in s.copies
    assert 2 not in s.workers["a"].inflight and s.workers["a"].inflight_slots == 1
    assert s.workers["b"].inflight == {2: queued}
    assert s.finish("b", 2) is queued

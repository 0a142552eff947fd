"""The dashboard's counts: what each settled call adds, and what a worker's word can't break."""

from __future__ import annotations

import math

from distrib import Cancelled, WorkerLost
from distrib._response import Response
from distrib.main._tracked import Task
from distrib.main._stats import FAILURES, Stats, error_type


def task(task_id: int, value: object = None, exc: BaseException | None = None,
         finished: bool = True) -> Task:
    response: Response[object] = Response(task_id, "f", None)
    if finished:
        response._set_outcome("w0", value, exc=exc)
    return Task(task_id, "f", [], ("*",), 1, 3, None, response)


def test_each_call_counts_once_by_how_it_ended() -> None:
    stats = Stats(0)
    for _ in range(4):
        stats.submitted("f")
    done = task(1, 2)
    stats.counted(done, "w0", "link0")
    stats.counted(done, "w0", "link0")  # (again, as when its worker is lost later: once)
    stats.counted(task(2, exc=ValueError("bad input 2")), "w1", "link1")
    cancelled = task(3, finished=False)
    cancelled.response.cancel()
    stats.counted(cancelled)
    stats.counted(task(4, exc=Cancelled("stopped")), "w1")  # (ended as Cancelled: cancelled)
    retry = task(5, finished=False)
    stats.counted(retry, "w0", retried=True)
    stats.counted(retry, "w0")  # (deferred: nothing)
    stats.placed("f")  # (a worker placed one itself: counted apart, never settled here)
    f = stats.functions["f"]
    assert (f.submitted, f.done, f.failed, f.cancelled, f.retried) == (4, 1, 1, 2, 1)
    assert f.placed == 1
    assert stats.by_worker == {"link0": 1, "link1": 1}  # (reported by a worker only)
    (failure,) = stats.failures
    assert failure["type"] == "ValueError" and failure["message"] == "bad input 2"
    assert failure["worker"] == "w1" and failure["task"] == 2


class Unprintable(Exception):
    def __str__(self) -> str:
        return self.detail  # type: ignore[attr-defined,no-any-return]  # (did not travel)


def test_recent_failures_are_bounded_newest_first_and_any_error_is_shown() -> None:
    stats = Stats(0)
    for i in range(FAILURES + 5):
        stats.counted(task(i, exc=WorkerLost(f"lost {i}")), "w0")
    assert len(stats.failures) == FAILURES
    assert stats.failures[0]["message"] == f"lost {FAILURES + 4}"
    assert stats.failures[0]["type"] == "distrib._errors.WorkerLost"
    stats.counted(task(99, exc=Unprintable()), "w0")
    assert "cannot be shown" in stats.failures[0]["message"]
    assert error_type(Cancelled("x")) == "distrib._errors.Cancelled"


def test_run_times_from_a_worker_that_sends_garbage_are_ignored() -> None:
    stats = Stats(0)
    for reported in ("0.25", "0.75", "nan", "inf", "1e308", "-1", "fast", ""):
        stats.ran("f", reported)
    f = stats.functions["f"]
    assert f.runs == 2 and math.isclose(f.run_total, 1.0) and list(f.recent) == [0.25, 0.75]


def test_throughput_is_sampled_once_a_second_from_settled_calls() -> None:
    stats = Stats(0)
    start = stats._sampled[0]
    for i in range(10):
        stats.counted(task(i, i), "w0")
    stats.sample(start + 0.5)  # (too soon: no point)
    assert not stats.throughput
    stats.sample(start + 2.0)
    (point,) = stats.throughput
    assert math.isclose(point[1], 5.0)

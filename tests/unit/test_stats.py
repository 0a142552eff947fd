"""The dashboard's counts: what each settled call adds, and what a worker's word can't break."""

from __future__ import annotations

import math

from distrib import Cancelled, WorkerLost
from distrib._response import Response
from distrib.main._scheduler import Task
from distrib.main._stats import FAILURES, Stats, error_type


def settled(value: object = None, exc: BaseException | None = None) -> Response[object]:
    response: Response[object] = Response(1, "f", None)
    response._finish("w0", value, exc=exc)
    return response


def test_each_call_counts_once_by_how_it_ended() -> None:
    stats = Stats()
    for _ in range(3):
        stats.submitted("f")
    stats.settled("f", 1, settled(2), "w0")
    stats.settled("f", 2, settled(exc=ValueError("bad input 2")), "w1")
    cancelled: Response[object] = Response(3, "f", None)
    cancelled.cancel()
    stats.settled("f", 3, cancelled, "")
    retry: Response[object] = Response(4, "f", None)
    stats.counted(Task(4, "f", [], ("*",), 1, 3, None, retry), "w0", retried=True)
    stats.counted(Task(4, "f", [], ("*",), 1, 3, None, retry), "w0")  # (deferred: nothing)
    f = stats.functions["f"]
    assert (f.submitted, f.done, f.failed, f.cancelled, f.retried) == (3, 1, 1, 1, 1)
    assert stats.by_worker == {"w0": 1, "w1": 1}
    (failure,) = stats.failures
    assert failure["type"] == "ValueError" and failure["message"] == "bad input 2"
    assert failure["worker"] == "w1" and failure["task"] == 2


def test_recent_failures_are_bounded_newest_first() -> None:
    stats = Stats()
    for i in range(FAILURES + 5):
        stats.settled("f", i, settled(exc=WorkerLost(f"lost {i}")), "w0")
    assert len(stats.failures) == FAILURES
    assert stats.failures[0]["message"] == f"lost {FAILURES + 4}"
    assert stats.failures[0]["type"] == "distrib._errors.WorkerLost"
    assert error_type(Cancelled("x")) == "distrib._errors.Cancelled"


def test_run_times_from_a_worker_that_sends_garbage_are_ignored() -> None:
    stats = Stats()
    for reported in ("0.25", "0.75", "nan", "inf", "-1", "fast", ""):
        stats.ran("f", reported)
    f = stats.functions["f"]
    assert f.runs == 2 and math.isclose(f.run_total, 1.0) and list(f.recent) == [0.25, 0.75]


def test_throughput_is_sampled_once_a_second_from_settled_calls() -> None:
    stats = Stats()
    start = stats._sampled[0]
    for i in range(10):
        stats.settled("f", i, settled(i), "w0")
    stats.sample(start + 0.5)  # (too soon: no point)
    assert not stats.throughput
    stats.sample(start + 2.0)
    (point,) = stats.throughput
    assert math.isclose(point[1], 5.0)

"""How many tasks the Main sends a worker ahead (``_scheduler.ahead``): sized from its link's
measured round trip and the rate its slots finish tasks at."""

from __future__ import annotations

from distrib.main._scheduler import Scheduler
from distrib.main._tracked import MAX_QUEUED, WorkerView, ahead


def test_without_a_round_trip_two_rounds_of_slots_are_queued() -> None:
    assert ahead(4, 0.0, 0.0, extra=2) == 8
    assert ahead(1, 0.0, 0.0) == 16  # (never less than ``extra``)
    # Long tasks over a slow link: one more round of slots already covers it.
    assert ahead(8, rate=8 / 1.0, round_trip=0.05, extra=2) == 16


def test_short_tasks_over_a_slow_link_queue_what_a_round_trip_takes_twice() -> None:
    # 4 slots of 10 ms tasks: 400 a second; 50 ms each way and back: 20 finish per round
    # trip, queued twice over, and 20 ms more.
    assert ahead(4, rate=400.0, round_trip=0.05, extra=2) == int(400 * (0.02 + 0.1))
    # The same worker on a LAN (0.5 ms) needs far fewer.
    assert ahead(4, rate=400.0, round_trip=0.0005, extra=2) == 8
    assert ahead(64, rate=1e6, round_trip=1.0) == MAX_QUEUED


def test_a_rate_throttled_by_a_short_queue_grows_to_the_whole_rate() -> None:
    # A worker whose slots could finish 1000 tasks a second, 100 ms away: each round trip it
    # can finish at most what it holds, so the measured rate is capped by the depth. The
    # depth sized from that rate still grows until the slots are busy.
    slots, capacity, round_trip = 4, 1000.0, 0.1
    rate = 0.0
    for _ in range(8):
        holds = slots + ahead(slots, rate, round_trip, extra=2)
        rate = min(capacity, holds / round_trip)
    assert rate == capacity
    assert ahead(slots, rate, round_trip, extra=2) >= capacity * round_trip


def test_the_scheduler_sizes_each_worker_from_its_own_round_trip() -> None:
    s = Scheduler("3.11", extra_depth=2)
    near = WorkerView("near", "near", "linux-x86_64", "3.11", 2)
    far = WorkerView("far", "far", "linux-x86_64", "3.11", 2)
    s.join(near)
    s.join(far)
    near.finished = far.finished = 200  # (10 ms tasks on 2 slots)
    s.observe(1.0)
    far.round_trip, near.round_trip = 0.1, 0.0002
    assert s.depth(near) == 2 + 4
    assert s.depth(far) == 2 + int(200 * 0.22)

"""Disk use measured off the daemon's loop: asking never waits for a walk of the disk."""

from __future__ import annotations

import threading

from distrib.worker._diskuse import DiskUse
from tests.helpers import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_asking_never_waits_and_starts_one_measure_at_a_time() -> None:
    release = threading.Event()
    walks: list[int] = []

    def walk() -> int:
        walks.append(1)
        assert release.wait(60)
        return len(walks) * 1000

    clock = Clock()
    disk = DiskUse(walk, max_age=10.0, clock=clock)
    for _ in range(200):  # a peer asking for status in a loop, while the walk is slow
        assert disk.get()[0] is None
    assert disk.measures == 1
    release.set()
    wait_for(lambda: disk.get()[0] == 1000, what="the first measure")
    clock.now += 5  # fresh enough: no new walk
    assert disk.get() == (1000, 5.0)
    assert disk.measures == 1
    clock.now += 6  # stale: measured again, the old value meanwhile
    assert disk.get()[0] == 1000
    wait_for(lambda: disk.get()[0] == 2000, what="the second measure")
    assert disk.measures == 2 and len(walks) == 2


def test_a_failed_measure_keeps_the_last_value_and_is_tried_again() -> None:
    results: list[object] = [7, OSError("gone"), 9]

    def walk() -> int:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, int)
        return result

    clock = Clock()
    disk = DiskUse(walk, max_age=1.0, clock=clock)
    disk.get()
    wait_for(lambda: disk.get()[0] == 7, what="the first measure")
    clock.now += 2
    disk.get()  # this one raises
    wait_for(lambda: len(results) == 1 and not disk._running, what="the failed measure")
    assert disk.get()[0] == 7 and disk.measures == 2  # (not tried again at once)
    clock.now += 2
    assert disk.get()[0] == 7  # (tried again after max_age)
    wait_for(lambda: disk.get()[0] == 9, what="the measure after the failure")


def test_a_change_makes_the_next_query_measure_again() -> None:
    release = threading.Event()
    walks: list[int] = []

    def walk() -> int:
        walks.append(1)
        assert release.wait(60)
        return len(walks)

    clock = Clock()
    disk = DiskUse(walk, max_age=1000.0, clock=clock)
    disk.refresh()  # nothing measured until asked
    assert disk.measures == 0
    disk.get()  # the first measure, held
    disk.refresh()  # a workspace arrived meanwhile
    assert disk.get()[0] is None and disk.measures == 1  # (one at a time)
    release.set()
    wait_for(lambda: disk.get()[0] is not None and not disk._running, what="the first measure")
    wait_for(lambda: disk.get()[0] == 2, what="the measure after the change")
    assert disk.measures == 2
    assert disk.get()[0] == 2 and disk.measures == 2  # fresh and unchanged: no walk


def test_once_asked_a_change_is_measured_at_once_not_at_the_next_query() -> None:
    walks: list[int] = []

    def walk() -> int:
        walks.append(1)
        return len(walks)

    disk = DiskUse(walk, max_age=1000.0, clock=Clock())
    disk.get()
    wait_for(lambda: disk.get()[0] == 1, what="the first measure")
    disk.refresh()  # a workspace arrived: the next query reads it already measured
    wait_for(lambda: len(walks) == 2 and not disk._running, what="the measure of the change")
    assert disk.get() == (2, 0.0) and disk.measures == 2

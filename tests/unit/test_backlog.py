"""The worker's backlog of messages for Mains whose connection is full, and the core starting
none of their tasks meanwhile (``worker/_backlog.py``)."""

from __future__ import annotations

from typing import Any

from distrib.worker._backlog import RETRY_FIRST, RETRY_MOST, Backlog
from tests.unit.test_core import Worker, qt


class Connection:
    """A peer's queue in the socket: takes ``room`` messages, then is full."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.took: list[Any] = []

    def put(self, frames: list[Any]) -> bool:
        if self.room == 0:
            return False
        self.room -= 1
        self.took.append(frames[0])
        return True


def test_what_a_full_connection_does_not_take_waits_in_order_behind_what_it_did() -> None:
    backlog, conn = Backlog(), Connection(2)
    assert not backlog.send(b"A", [[1], [2]], conn.put, 0.0)  # (it took both)
    assert backlog.send(b"A", [[3], [4]], conn.put, 0.0)  # full: congested now
    assert b"A" in backlog and backlog.size(b"A") == 2
    assert not backlog.send(b"A", [[5]], conn.put, 0.0)  # (already: behind the rest)
    conn.room = 1
    assert backlog.flush(lambda peer: conn.put, 1.0) == []
    assert conn.took == [1, 2, 3] and backlog.size(b"A") == 2
    conn.room = 10
    assert backlog.flush(lambda peer: conn.put, 2.0) == [b"A"]
    assert conn.took == [1, 2, 3, 4, 5] and b"A" not in backlog and not backlog


def test_a_main_whose_connection_takes_nothing_for_a_while_is_stuck_one_that_moves_is_not(
        ) -> None:
    backlog, still, slow = Backlog(), Connection(0), Connection(0)
    backlog.send(b"still", [[1]], still.put, 0.0)
    backlog.send(b"slow", [[1], [2]], slow.put, 0.0)
    slow.room = 1
    backlog.flush({b"still": still.put, b"slow": slow.put}.__getitem__, 6.0)
    assert backlog.stuck(12.0, 10.0) == [b"still"]  # (slow took one at 6 s)
    backlog.drop(b"still")
    assert backlog.stuck(12.0, 10.0) == [] and b"still" not in backlog


def test_retries_come_later_while_nothing_moves_and_at_once_after_it_did() -> None:
    backlog, conn = Backlog(), Connection(0)
    backlog.send(b"A", [[1], [2]], conn.put, 0.0)
    for _ in range(10):
        backlog.flush(lambda peer: conn.put, 0.0)
    assert backlog.retry == RETRY_MOST
    conn.room = 1
    backlog.flush(lambda peer: conn.put, 0.0)
    assert backlog.retry == RETRY_FIRST


def test_none_of_a_congested_mains_tasks_start_and_the_others_take_the_slots() -> None:
    worker, backlog = Worker(2), Backlog()
    worker.core.congested = backlog
    backlog.send(b"A", [[1]], Connection(0).put, 0.0)
    worker.submit(qt(1, b"A"), qt(2, b"A"), qt(3, b"B"), qt(4, b"B"))
    assert worker.running() == {3, 4}
    worker.done(3, b"B")
    worker.done(4, b"B")
    worker.turn()
    assert worker.running() == set()  # (A's wait; nothing is prefetched for them either)
    backlog.flush(lambda peer: Connection(1).put, 1.0)
    worker.turn()
    assert worker.running() == {1, 2}

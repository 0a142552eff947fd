"""The worker's backlog of messages for Mains whose connection is full, and the core starting
none of their tasks meanwhile (``worker/_backlog.py``)."""

from __future__ import annotations

from typing import Any

from distrib.worker._backlog import HOLD_BYTES, RETRY_FIRST, RETRY_MOST, Backlog
from tests.unit.test_core import Worker, qt


def backlog_of(conns: dict[bytes, Connection]) -> Backlog:
    """A backlog whose peers' sockets are ``conns``."""
    return Backlog(lambda peer: (conns[peer], None),
                   lambda conn, frames, routing: conn.put(frames))


class Connection:
    """A peer's queue in the socket: takes ``room`` messages, then is full."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.took: list[Any] = []

    def put(self, frames: list[Any], routing: bytes | None = None) -> bool:
        if self.room == 0:
            return False
        self.room -= 1
        self.took.append(frames[0] if len(frames[0]) < 100 else len(frames[0]))
        return True


def test_what_a_full_connection_does_not_take_waits_in_order_behind_what_it_did() -> None:
    conn = Connection(2)
    backlog = backlog_of({b"A": conn})
    assert not backlog.send(b"A", [[b"1"], [b"2"]], 0.0)  # (it took both)
    assert not backlog.send(b"A", [[b"3"], [b"4"]], 0.0)  # full: they wait (a few bytes)
    assert backlog.size(b"A") == 2 and b"A" not in backlog.held
    backlog.send(b"A", [[b"5"]], 0.0)
    conn.room = 1
    assert backlog.flush(1.0) == []
    assert conn.took == [b"1", b"2", b"3"] and backlog.size(b"A") == 2
    conn.room = 10
    assert backlog.flush(2.0) == []  # (it was not held: nothing to say)
    assert conn.took == [b"1", b"2", b"3", b"4", b"5"] and not backlog


def test_a_main_whose_backlog_grows_past_the_bound_is_held_until_all_of_it_went() -> None:
    conn = Connection(0)
    backlog = backlog_of({b"A": conn})
    piece = b"x" * (1 << 20)
    said = [backlog.send(b"A", [[piece]], 0.0) for _ in range(HOLD_BYTES >> 20)]
    assert said == [False] * (len(said) - 1) + [True] and b"A" in backlog.held
    conn.room = 1
    assert backlog.flush(1.0) == [] and b"A" in backlog.held  # (below the bound: still held)
    conn.room = 100
    assert backlog.flush(2.0) == [b"A"] and b"A" not in backlog.held


def test_a_main_whose_connection_takes_nothing_for_a_while_is_stuck_one_that_moves_is_not(
        ) -> None:
    still, slow = Connection(0), Connection(0)
    backlog = backlog_of({b"still": still, b"slow": slow})
    backlog.send(b"still", [[b"1"]], 0.0)
    backlog.send(b"slow", [[b"1"], [b"2"]], 0.0)
    slow.room = 1
    backlog.flush(6.0)
    assert backlog.stuck(12.0, 10.0) == [b"still"]  # (slow took one at 6 s)
    backlog.drop(b"still")
    assert backlog.stuck(12.0, 10.0) == [] and b"still" not in backlog.waiting


def test_retries_come_later_while_nothing_moves_and_at_once_after_it_did() -> None:
    conn = Connection(0)
    backlog = backlog_of({b"A": conn})
    backlog.send(b"A", [[b"1"], [b"2"]], 0.0)
    for _ in range(10):
        backlog.flush(0.0)
    assert backlog.retry == RETRY_MOST
    conn.room = 1
    backlog.flush(0.0)
    assert backlog.retry == RETRY_FIRST


def test_a_message_to_a_connection_that_is_gone_is_dropped_not_kept() -> None:
    backlog = Backlog(lambda peer: (None, None))
    assert not backlog.send(b"A", [[b"1"]], 0.0) and not backlog


def test_none_of_a_congested_mains_tasks_start_and_the_others_take_the_slots() -> None:
    worker, conn = Worker(2), Connection(0)
    backlog = backlog_of({b"A": conn})
    worker.core.congested = backlog.held
    backlog.send(b"A", [[b"x" * HOLD_BYTES]], 0.0)
    worker.submit(qt(1, b"A"), qt(2, b"A"), qt(3, b"B"), qt(4, b"B"))
    assert worker.running() == {3, 4}
    worker.done(3, b"B")
    worker.done(4, b"B")
    worker.turn()
    assert worker.running() == set()  # (A's wait; nothing is prefetched for them either)
    conn.room = 1
    backlog.flush(1.0)
    worker.turn()
    assert worker.running() == {1, 2}

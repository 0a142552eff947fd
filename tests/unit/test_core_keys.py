"""Bounds per key, through ``Core.handle``: the Mains that connect with one public key share
that key's quota, its fair share and its queued bytes; a Main without a key counts alone."""

from __future__ import annotations

from distrib.wire._messages import Outcome
from distrib.worker._events import (
    ExecutorReady,
    MainLeft,
    QuotaSet,
    Spawn,
    TaskDone,
    TaskQueued,
    Turn,
)
from distrib.worker._serving import key_account
from tests.unit.test_core_slots import Checked, of, qt, reports, started

KEY = key_account("K" * 40)
FIVE = [b"M1", b"M2", b"M3", b"M4", b"M5"]


def _run_all(s: Checked, now: float = 0.0) -> None:
    """Every spawned executor says ready, and a turn starts what fits."""
    for ex in list(s.executors.values()):
        if not ex.ready:
            s.handle(ExecutorReady(ex.ex_id), now)
    s.handle(Turn(), now)


def test_five_mains_of_a_one_slot_key_hold_one_slot_together() -> None:
    s = Checked(4)
    for peer in FIVE:
        s.handle(QuotaSet(peer, 1, 1.0, KEY), 0.0)
    assert all(s.offered(peer) == 1 for peer in FIVE)
    started(s, *[qt(10 * i + j, peer=peer) for i, peer in enumerate(FIVE) for j in range(3)])
    _run_all(s)
    assert s.held_by_account() == {KEY: 1} and sum(s.held().values()) == 1
    # one ends: the next of the key's tasks takes its slot, never a second one
    for _ in range(6):
        ex = next(ex for ex in s.executors.values() if ex.runs and ex.ready)
        s.handle(TaskDone(ex.ex_id, ex.runs[0].run_id, Outcome.OK, {}, []), 1.0)
        _run_all(s, 1.0)
        assert s.held_by_account() == {KEY: 1}
    # a Main without a key is not held back by the key's quota
    s.handle(QuotaSet(b"X", None, 1.0), 1.0)
    started(s, *[qt(100 + i, peer=b"X") for i in range(5)])
    _run_all(s, 1.0)
    assert s.held_by_account() == {KEY: 1, b"X": 3}


def test_mains_without_a_key_each_count_alone() -> None:
    s = Checked(4)
    for peer in (b"A", b"B"):
        s.handle(QuotaSet(peer, 1, 1.0), 0.0)
    started(s, *[qt(i, peer=p) for p in (b"A", b"B") for i in range(3)])
    _run_all(s)
    assert s.held() == {b"A": 1, b"B": 1}


def test_the_fair_share_is_per_key_not_per_main() -> None:
    """Four Mains of one key against one Main of another: half the slots each, not 4 to 1."""
    s = Checked(4)
    for peer in FIVE[:4]:
        s.handle(QuotaSet(peer, None, 1.0, KEY), 0.0)
    other = key_account("L" * 40)
    s.handle(QuotaSet(b"O", None, 1.0, other), 0.0)
    tasks = [qt(100 * i + j, peer=p) for j in range(10) for i, p in enumerate(FIVE[:4])]
    started(s, *tasks, *[qt(1000 + j, peer=b"O") for j in range(10)])
    _run_all(s)
    assert s.held_by_account() == {KEY: 2, other: 2}
    # a priority on the key's line counts for the key, whichever Main it is told for
    s.handle(QuotaSet(FIVE[0], None, 3.0, KEY), 1.0)
    assert s.weights[KEY] == 3.0


def test_a_quota_lowered_for_a_key_asks_back_every_main_of_it() -> None:
    s = Checked(4)
    for peer in FIVE[:2]:
        s.handle(QuotaSet(peer, None, 1.0, KEY), 0.0)
    started(s, *[qt(10 * i + j, peer=p) for i, p in enumerate(FIVE[:2]) for j in range(2)])
    _run_all(s)
    assert s.held_by_account() == {KEY: 4}
    s.handle(QuotaSet(FIVE[0], 1, 1.0, KEY), 1.0)  # (as the file's new line is told)
    assert s.offered(FIVE[1]) == 1  # the other Main of the key too
    for ex in list(s.executors.values()):  # the running ones finish; nothing new starts...
        s.handle(TaskDone(ex.ex_id, ex.runs[0].run_id, Outcome.OK, {}, []), 2.0)
    s.handle(TaskQueued(qt(99, peer=FIVE[1])), 2.0)
    _run_all(s, 2.0)
    assert s.held_by_account() == {KEY: 1}  # ...but one, within the new quota


def test_the_queued_bytes_bound_counts_per_key() -> None:
    s = Checked(1, max_queued=3000)
    for peer in FIVE[:3]:
        s.handle(QuotaSet(peer, None, 1.0, KEY), 0.0)
    assert s.handle(TaskQueued(qt(1, peer=FIVE[0], size=2000)), 0.0) == []
    assert s.handle(TaskQueued(qt(2, peer=FIVE[1], size=900)), 0.0) == []
    # a third Main of the same key has no allowance of its own
    assert reports(s.handle(TaskQueued(qt(3, peer=FIVE[2], size=200)), 0.0)) == [
        (3, Outcome.DEFERRED)]
    # a Main of no key (or of another key) has its own
    s.handle(QuotaSet(b"X", None, 1.0), 0.0)
    assert s.handle(TaskQueued(qt(4, peer=b"X", size=2900)), 0.0) == []


def test_a_keys_quota_goes_with_its_last_main_and_stays_while_one_is_left() -> None:
    s = Checked(4)
    for peer in FIVE[:2]:
        s.handle(QuotaSet(peer, 1, 1.0, KEY), 0.0)
    s.handle(MainLeft(FIVE[0]), 0.0)
    assert s.limits == {KEY: 1} and s.offered(FIVE[1]) == 1
    s.handle(MainLeft(FIVE[1]), 0.0)
    assert s.limits == {} and s.accounts == {} and s.members == {}
    assert of(Spawn, s.handle(Turn(), 0.0)) == []

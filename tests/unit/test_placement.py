"""Where a call made inside a task goes (``worker/_placement``), from plain values: this
worker's situation, the workers of its Main it reaches directly, and the call."""

from __future__ import annotations

from typing import Any

import msgspec

from distrib.wire._messages import Outcome
from distrib.wire._record import ErrorRecord
from distrib.worker._placement import (
    Deliver, Here, Placement, PlacedCall, Reach, Relay, RunHere, SendTo, ToMain, delivery, place,
    relay_slots)

IDLE = Here("linux-x86_64", lends=True, load=0.0)
BUSY = Here("linux-x86_64", lends=True, load=1.0)
NOT_LENDING = Here("linux-x86_64", lends=False, load=0.0)


def call(**changes: Any) -> PlacedCall:
    child = PlacedCall(7, b"main", 1, 2, 3, 1, "leaf", "3.1", "called by root#3", ("*",), 1,
                       0, None, "d" * 64, 1, [b"payload"], mode="direct")
    return msgspec.structs.replace(child, **changes)


def ready(address: str, offered: int = 2, sent: int = 0, **changes: Any) -> Reach:
    return msgspec.structs.replace(Reach(address, ready=True, connect=False, platform="linux-x86_64",
                                   offered=offered, sent=sent), **changes)


def test_a_call_runs_here_while_a_slot_here_is_free() -> None:
    child = call()
    assert place(child, IDLE, [ready("a:1")], None) == Placement(RunHere(child))


def test_a_call_goes_where_the_fewest_slots_are_busy() -> None:
    child = call()
    targets = [ready("a:1", offered=4, sent=3), ready("b:1", offered=4, sent=1)]
    assert place(child, Here("linux-x86_64", True, 0.5), targets, None).action == SendTo(
        child, "b:1")
    # Here wins a tie with the workers it reaches, and is left for any less loaded.
    assert place(child, Here("linux-x86_64", True, 0.25), targets, None).action == RunHere(
        child)


def test_workers_not_ready_paused_stuck_too_small_or_of_another_platform_take_nothing() -> None:
    child = call(threads=2, platforms=("linux-*",))
    unfit = [ready("a:1", ready=False), ready("b:1", paused=True), ready("c:1", stuck=True),
             ready("d:1", offered=1), ready("e:1", platform="darwin-arm64")]
    assert isinstance(place(child, NOT_LENDING, unfit, []).action, ToMain)
    assert place(child, NOT_LENDING, [*unfit, ready("f:1")], []).action == SendTo(child, "f:1")


def test_links_due_are_connected_first_and_take_nothing_yet() -> None:
    child = call()
    targets = [Reach("a:1", ready=False, connect=True), ready("b:1", sent=2),
               Reach("c:1", ready=False, connect=False)]
    placed = place(child, BUSY, targets, None)
    assert placed.connect == ("a:1",)
    assert placed.action == RunHere(child)  # (every slot is busy: it waits here, load 1 = 1)


def test_this_worker_takes_nothing_it_does_not_lend_or_of_another_platform() -> None:
    assert isinstance(place(call(), NOT_LENDING, [], []).action, ToMain)
    assert isinstance(place(call(platforms=("darwin-*",)), IDLE, [], []).action, ToMain)


def test_with_every_slot_busy_an_auto_call_goes_through_the_main_if_it_has_other_workers(
        ) -> None:
    auto = call(mode="auto")
    reached = [ready("a:1", offered=1, sent=1)]
    # The Main's other workers, not reached from here: it may have room there.
    assert isinstance(place(auto, BUSY, reached, [("a:1", 1), ("z:1", 4)]).action, ToMain)
    assert isinstance(place(auto, BUSY, reached, None).action, ToMain)  # (Peers not heard)
    # Every worker of the Main is reached from here: it waits where the fewest wait.
    assert place(auto, BUSY, reached, [("a:1", 1)]).action == RunHere(auto)
    assert place(auto, Here("linux-x86_64", True, 2.0), reached,
                 [("a:1", 1)]).action == SendTo(auto, "a:1")
    # A "direct" call never goes through the Main while it has a place.
    direct = call(mode="direct")
    assert place(direct, BUSY, reached, [("z:1", 4)]).action == RunHere(direct)


def test_a_call_handed_back_is_placed_again_or_relayed_or_fails_once_lost_too_often() -> None:
    again = call(later=True, at="a:1", attempts=1, retries=1)
    assert place(again, IDLE, [], []).action == RunHere(again)
    assert place(again, NOT_LENDING, [], []).action == Relay(again)
    lost = call(later=True, at="a:1", attempts=2, retries=1)
    placed = place(lost, IDLE, [Reach("b:1", ready=False, connect=True)], [])
    assert placed.connect == () and isinstance(placed.action, Deliver)
    assert placed.action.status == "error"
    record = ErrorRecord.from_wire(placed.action.info)
    assert record.type_name == "distrib.WorkerLost" and "leaf#3.1" in record.message
    assert "tried 2 time(s)" in record.message


def test_relay_slots_count_the_mains_workers_not_reached() -> None:
    assert relay_slots(None, set()) == 1
    assert relay_slots([("a:1", 2), ("b:1", 3)], {"a:1"}) == 3
    assert relay_slots([("a:1", 2)], {"a:1"}) == 0


def test_how_a_call_ended_reaches_its_parent() -> None:
    child = call(attempts=1, retries=1, timeout=5.0)
    assert delivery(child, Outcome.OK, {"ran": "1"}, [b"r"]) == Deliver(child, "ok", {}, [b"r"])
    error = {"type": "ValueError"}
    assert delivery(child, Outcome.ERROR, error, [b"e"]) == Deliver(child, "error", error,
                                                                   [b"e"])
    for outcome, kind, says in [(Outcome.CRASHED, "distrib.WorkerCrashed", "tried 2 time(s)"),
                                (Outcome.TIMEOUT, "distrib.TaskTimeout", "timeout of 5.0 s"),
                                (Outcome.CANCELLED, "distrib.Cancelled", "was cancelled")]:
        ended = delivery(child, outcome, ErrorRecord("x", "boom").to_wire(), [b"gone"])
        record = ErrorRecord.from_wire(ended.info)
        assert (ended.status, ended.frames, record.type_name) == ("error", [], kind)
        assert record.message.startswith("leaf#3.1 ") and says in record.message

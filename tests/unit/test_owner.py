"""The owner's state (``worker._owner.OwnerState``), driven by its events alone: the owner's
word, the lending hours and load, and what Mains are told."""

from __future__ import annotations

from distrib.worker._owner import Change, OwnerState


def test_pause_and_resume_tell_mains_and_hand_queued_tasks_back() -> None:
    owner = OwnerState("pause", now=0.0)
    assert owner.effective() == ("serving", "") and not owner.paused
    change = owner.command("pause", now=1.0)
    assert change == Change(word="paused", told=("paused", ""), hand_back=True)
    assert owner.paused and owner.since == 1.0
    assert owner.command("pause", now=2.0) == Change()  # (said again: nothing changes)
    change = owner.command("resume", now=3.0)
    assert change == Change(word="serving", told=("serving", ""))  # (no "lends again" line)
    assert not owner.paused and owner.since == 3.0


def test_away_pauses_with_a_reason_and_serving_again_says_it_lends_again() -> None:
    owner = OwnerState("pause", now=0.0)
    assert owner.away_changed("outside its hours", now=1.0) == Change(
        told=("paused", "outside its hours"), hand_back=True)
    assert owner.away_changed("outside its hours", now=2.0) == Change()
    assert owner.away_changed("", now=3.0) == Change(told=("serving", ""), lends_again=True)


def test_vacate_only_when_the_machine_is_away_and_the_policy_says_so() -> None:
    owner = OwnerState("vacate", now=0.0)
    assert owner.away_changed("its owner is back", now=1.0).vacate
    owner.away_changed("", now=2.0)
    assert not owner.command("pause", now=3.0).vacate  # (the owner's word: queued only)
    owner = OwnerState("pause", now=0.0)
    assert owner.policy_changed("vacate", now=1.0) == Change()  # (Mains hear nothing new)
    assert owner.away_changed("busy", now=2.0).vacate


def test_a_pause_for_the_hours_under_the_owners_pause_changes_nothing_mains_hear() -> None:
    owner = OwnerState("pause", now=0.0)
    owner.command("pause", now=1.0)
    assert owner.away_changed("outside its hours", now=2.0) == Change()
    assert owner.effective() == ("paused", "")
    # Resumed while away: still paused, now for the hours (no hand back: it was paused).
    assert owner.command("resume", now=3.0) == Change(
        word="serving", told=("paused", "outside its hours"))
    assert owner.paused


def test_draining_refuses_pause_and_resume_and_hands_back_once() -> None:
    owner = OwnerState("pause", now=0.0)
    change = owner.command("drain", now=1.0)
    assert change == Change(word="draining", told=("draining", ""), hand_back=True)
    assert owner.draining
    for command in ("pause", "resume"):
        refused = owner.command(command, now=2.0)
        assert refused.refused.startswith("draining: it leaves") and refused.told is None
    assert owner.command("drain", now=3.0) == Change()
    assert owner.away_changed("outside its hours", now=4.0) == Change()
    assert owner.effective() == ("draining", "")


def test_a_paused_worker_drained_hands_nothing_back_again() -> None:
    owner = OwnerState("pause", now=0.0)
    owner.command("pause", now=1.0)
    assert owner.command("drain", now=2.0) == Change(word="draining", told=("draining", ""))

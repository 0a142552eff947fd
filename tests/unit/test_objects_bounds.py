"""The bounds on shared objects a worker keeps: ``--max-objects`` per key (a key's Mains
together; a Main without a key alone) and ``--max-objects-total`` for all Mains, with the
least recently used objects that no task passes removed first."""

from __future__ import annotations

from pathlib import Path

import pytest

from distrib.worker._objects import Objects

KEY = b"key K"


def _keep(objects: Objects, peer: bytes, name: str, size: int, account: bytes = b"",
          in_use: dict[bytes, set[str]] | None = None) -> str:
    """Plan one object for a task of ``peer`` and, if asked for, have it arrive: "" if kept,
    "defer", or the error."""
    plan = objects.plan(peer, {name: size}, lambda p: (in_use or {}).get(p, set()), account)
    if plan.error:
        return plan.error
    if plan.defer:
        return "defer"
    for asked in plan.ask:
        assert objects.arrived(peer, asked, [b"x" * size]) == ""
    return ""


def test_the_mains_of_one_key_share_its_limit(tmp_path: Path) -> None:
    objects = Objects(tmp_path, limit=10, total=100)
    assert _keep(objects, b"A", "a1", 6, KEY) == ""
    # another Main of the key: the first one's object, which no task passes, makes room
    assert _keep(objects, b"B", "b1", 6, KEY) == ""
    assert objects.taken(KEY) == 6 and not (tmp_path / b"A".hex() / "a1").exists()
    # while a task of A passes its object, B's next one waits (deferred)
    assert _keep(objects, b"A", "a2", 4, KEY) == ""
    assert _keep(objects, b"B", "b2", 6, KEY, {b"A": {"a2"}, b"B": {"b1"}}) == "defer"
    assert objects.taken(KEY) == 10


def test_mains_without_a_key_each_have_the_limit(tmp_path: Path) -> None:
    objects = Objects(tmp_path, limit=10, total=100)
    assert _keep(objects, b"A", "a1", 6) == ""
    assert _keep(objects, b"B", "b1", 6) == ""
    assert objects.held() == (2, 12)


def test_all_mains_together_stay_under_the_total(tmp_path: Path) -> None:
    objects = Objects(tmp_path, limit=10, total=15)
    assert _keep(objects, b"A", "a1", 6) == ""
    assert _keep(objects, b"B", "b1", 6) == ""
    # a third Main: the least recently used object no task passes (A's) goes
    assert _keep(objects, b"C", "c1", 6, in_use={b"B": {"b1"}}) == ""
    assert objects.held() == (2, 12)
    assert not (tmp_path / b"A".hex() / "a1").exists()
    # every object in use: the new one is refused, naming the bound; nothing is removed
    error = _keep(objects, b"D", "d1", 6, in_use={b"B": {"b1"}, b"C": {"c1"}})
    assert "--max-objects-total" in error and "15 bytes" in error, error
    assert objects.held() == (2, 12) and objects.taken() <= 15
    # more than the total at once: refused, naming it
    objects = Objects(tmp_path / "2", limit=10, total=8)
    error = _keep(objects, b"A", "big", 9)
    assert "--max-objects-total" in error and "8 bytes" in error, error


def test_a_main_leaving_gives_its_room_back(tmp_path: Path) -> None:
    objects = Objects(tmp_path, limit=10, total=12)
    assert _keep(objects, b"A", "a1", 6, KEY) == ""
    assert _keep(objects, b"B", "b1", 6, KEY, {b"A": {"a1"}}) == "defer"
    objects.forget(b"A")
    assert objects.taken() == 0
    assert _keep(objects, b"B", "b1", 6, KEY) == ""


def test_a_stale_folder_another_daemon_removes_meanwhile_is_passed_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Hundreds of daemons starting at once each clear the stale /dev/shm folders of daemons
    # that are gone: one that another removed between the listing and the look is no error.
    from distrib import _shm

    monkeypatch.setattr(_shm, "ROOT", tmp_path)
    gone, stale = tmp_path / "distrib-w999999998-a", tmp_path / "distrib-w999999999-b"
    gone.mkdir()
    stale.mkdir()
    listed = list(tmp_path.glob("distrib-w*-*"))
    gone.rmdir()
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(listed))
    Objects.remove_stale()
    assert not stale.exists()

"""How many Slurm jobs a Main's load wants (``launch._adapt``, pure)."""

from __future__ import annotations

from distrib.launch._adapt import Load, change


def test_waiting_tasks_without_free_slots_grow_up_to_max_jobs() -> None:
    assert change(Load(0, 0, 200), 0, 2, 0.0, 0, 20, 60.0) == 20
    assert change(Load(0, 0, 5), 0, 2, 0.0, 0, 20, 60.0) == 3
    assert change(Load(0, 0, 200), 18, 2, 0.0, 0, 20, 60.0) == 2


def test_slots_of_jobs_still_coming_count_as_slots() -> None:
    # 2 jobs of 2 slots submitted, none connected yet: 4 slots are on their way for 5 tasks.
    assert change(Load(0, 0, 5), 2, 2, 0.0, 0, 20, 60.0) == 1
    assert change(Load(0, 0, 4), 2, 2, 0.0, 0, 20, 60.0) == 0


def test_free_slots_take_waiting_tasks_first() -> None:
    assert change(Load(2, 4, 4), 2, 2, 0.0, 0, 20, 60.0) == 0
    assert change(Load(4, 4, 9), 2, 2, 0.0, 0, 20, 60.0) == 3


def test_an_idle_cluster_shrinks_to_min_jobs_only_after_the_idle_period() -> None:
    assert change(Load(0, 8, 0), 4, 2, 59.0, 1, 20, 60.0) == 0
    assert change(Load(0, 8, 0), 4, 2, 60.0, 1, 20, 60.0) == -3
    assert change(Load(1, 8, 1), 4, 2, 600.0, 1, 20, 60.0) == 0  # (a task runs: no shrink)


def test_below_min_jobs_submits_up_to_it() -> None:
    assert change(Load(), 0, 2, 0.0, 2, 20, 60.0) == 2

"""Placement by heaps (``Scheduler.assign``) picks what a scan of every able worker picks.

The scan is the rule the heaps replace (O(workers) per task, kept as
``bench.simulate.ScanScheduler``): random workers, tasks and
changes (finishes, deferrals, lent slots, pauses, measured rates and round trips, workers
leaving and joining) are played on two schedulers, one placing by each rule, with a placement
after each change: every placement must be the same.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.simulate import ScanScheduler
from distrib.main._scheduler import Scheduler
from distrib.main._tracked import Task, WorkerView

PLATFORMS = ("linux-x86_64", "linux-aarch64", "darwin-arm64")
REQUIREMENTS = [(("linux-*",), 1, 0), (("*",), 1, 0), (("*",), 2, 0), (("linux-x86_64",), 4, 0),
                (("darwin-*",), 1, 0)]


def _placed(out: dict[str, list[Task]]) -> dict[str, list[int]]:
    return {link: [t.task_id for t in tasks] for link, tasks in out.items()}


steps = st.lists(st.one_of(
    st.tuples(st.just("join"), st.sampled_from([1, 2, 2, 4]), st.sampled_from(PLATFORMS),
              st.sampled_from(["3.11", "3.11", "3.10"])),
    st.tuples(st.just("add"), st.integers(0, len(REQUIREMENTS) - 1), st.integers(1, 40),
              st.booleans()),
    st.tuples(st.just("finish"), st.integers(0, 1000)),
    st.tuples(st.just("defer"), st.integers(0, 1000)),
    st.tuples(st.just("lend"), st.integers(0, 1000), st.integers(0, 3)),
    st.tuples(st.just("pause"), st.integers(0, 1000), st.booleans()),
    st.tuples(st.just("measure"), st.integers(0, 1000), st.floats(0, 0.2), st.integers(0, 500)),
    st.tuples(st.just("observe"), st.sampled_from([0.1, 0.2, 1.0])),
    st.tuples(st.just("leave"), st.integers(0, 1000)),
), max_size=60)


def _check_tops(s: Scheduler) -> None:
    """Each requirement's heap tops with the worker the scan would pick (ties: the first)."""
    for req in REQUIREMENTS:
        able = [w for w in s.workers.values() if w.can_run(req, s.python) and not w.full]
        best = max(able, key=lambda w: (w.slots - w.inflight_slots + w.lent,
                                        s.depth(w) - w.inflight_slots + w.lent), default=None)
        assert s._ranks.top(req) is best


def _play(s: Scheduler, plan: list[tuple[Any, ...]]) -> list[dict[str, list[int]]]:
    placements: list[dict[str, list[int]]] = []
    next_id = joined = 0
    for step in plan:
        kind, links = step[0], list(s.workers)
        picks = links and kind not in ("join", "add", "observe")
        pick = links[step[1] % len(links)] if picks else None
        view = s.workers[pick] if pick is not None else None
        if kind == "join":
            s.join(WorkerView(f"w{joined}", f"w{joined}", step[2], step[3], step[1]))
            joined += 1
        elif kind == "add":
            globs, threads, _ = REQUIREMENTS[step[1]]
            for _ in range(step[2]):
                task = Task(next_id, "f", [], globs, threads, 1, None)
                task.depth = int(step[3])
                s.add(task)
                next_id += 1
        elif view is not None and kind in ("finish", "defer") and view.inflight:
            task_id = sorted(view.inflight)[step[1] % len(view.inflight)]
            done = s.finish(view.link, task_id)
            if kind == "defer" and done is not None:
                s.defer(view.link, done)
        elif view is not None and kind == "lend":
            view.parked = set(sorted(view.inflight)[:step[2]])
            view.lent = sum(view.inflight[t].threads for t in view.parked)
        elif view is not None and kind == "pause":
            view.paused = step[2]
        elif view is not None and kind == "measure":
            view.round_trip, view.finished = step[2], step[3]
        elif kind == "observe":
            s.observe(step[1])
        elif view is not None and kind == "leave":
            s.leave(view.link)
        if type(s) is Scheduler:
            _check_tops(s)
        placements.append(_placed(s.assign()))
    return placements


@settings(max_examples=300, deadline=None)
@given(steps)
def test_heaps_place_every_task_where_the_scan_would(plan: list[tuple[Any, ...]]) -> None:
    assert _play(Scheduler("3.11", extra_depth=2), plan) == _play(
        ScanScheduler("3.11", extra_depth=2), plan)


def test_a_worker_changed_from_outside_the_scheduler_is_ranked_anew() -> None:
    s = Scheduler("3.11", extra_depth=2)
    a, b = WorkerView("a", "a", "linux-x86_64", "3.11", 4), WorkerView("b", "b", "linux-x86_64",
                                                                       "3.11", 2)
    s.join(a)
    s.join(b)
    s.add(Task(1, "f", [], ("*",), 1, 1, None))
    assert _placed(s.assign()) == {"a": [1]}
    a.paused = True  # (as the links do when its owner pauses it: the hook sees it)
    s.add(Task(2, "f", [], ("*",), 1, 1, None))
    assert _placed(s.assign()) == {"b": [2]}
    a.paused = False
    b.inflight_slots = 0  # (b now has 2 idle slots, a 3: a still wins)
    b.slots = 8
    s.add(Task(3, "f", [], ("*",), 1, 1, None))
    assert _placed(s.assign()) == {"b": [3]}


def test_a_measured_rate_or_round_trip_reranks_workers_of_equal_free_slots() -> None:
    s = Scheduler("3.11", extra_depth=2)
    a, b = (WorkerView(x, x, "linux-x86_64", "3.11", 1) for x in "ab")
    s.join(a)
    s.join(b)
    for i in range(6):
        s.add(Task(i, "f", [], ("*",), 1, 1, None))
    s.assign()  # (each holds 3: its slot and two queued)
    b.finished = 1000
    s.observe(1.0)  # b finishes 1,000 a second: its queue is deeper than a's
    s.add(Task(6, "f", [], ("*",), 1, 1, None))
    assert _placed(s.assign()) == {"b": [6]}
    a.finished = b.finished = 1000
    s.observe(1.0)  # both at 1,000 a second
    s.finish("b", 6)
    s._ranks.rank_touched()
    b.round_trip = 1.0  # b's link is slow: b's queue is deeper (the tie went to a before)
    s.add(Task(7, "f", [], ("*",), 1, 1, None))
    assert _placed(s.assign()) == {"b": [7]}


def test_stale_entries_do_not_pile_up() -> None:
    s = Scheduler("3.11")
    for i in range(10):
        s.join(WorkerView(f"w{i}", f"w{i}", "linux-x86_64", "3.11", 4))
    for i in range(5000):
        s.add(Task(i, "f", [], ("*",), 1, 1, None))
        (link, [task]), = s.assign().items()
        s.finish(link, task.task_id)
    assert all(len(heap) <= 2 * 10 + 16 for heap in s._ranks.heaps.values())

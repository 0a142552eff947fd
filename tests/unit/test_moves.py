"""Work that moves to where the slots are: the worker core's answer to a Main taking tasks
back (``RevokeAsked``), the scheduler's side of a move, and the policy (``main._rebalance``)."""

from __future__ import annotations

from collections import Counter

from distrib.main._rebalance import Move, Moves, plan
from distrib.main._scheduler import Scheduler
from distrib.main._tracked import Task, WorkerView
from distrib.worker._events import GaveBack, RevokeAsked
from tests.unit.test_core import Worker, of, qt

PY = "3.12"


# --- the worker's core -----------------------------------------------------------------------


def test_queued_tasks_are_given_back_and_started_or_handed_ones_kept() -> None:
    w = Worker(1)
    w.submit(qt(1), qt(2), qt(3), qt(4))
    handed = {run.task.task_id for ex in w.core.executors.values() for run in ex.runs}
    assert 1 in handed  # (running; a task handed to the executor behind it counts as started)
    queued = {t.task_id for t in w.core.queues.tasks()}
    out = w.do(RevokeAsked(b"A", (1, 2, 3, 4, 99)))
    assert of(GaveBack, out) == [GaveBack(b"A", sorted(queued), sorted(handed | {99}))]
    assert not w.core.queues.tasks()
    assert w.do(RevokeAsked(b"A", (3,))) == [GaveBack(b"A", [], [3])]  # (once only)
    w.done(1)
    assert w.running() <= handed  # what was given back never starts here


def test_a_main_cannot_take_back_another_mains_tasks() -> None:
    w = Worker(1)
    w.submit(qt(1, b"A"), qt(2, b"A"), qt(3, b"A"))
    before = [t.task_id for t in w.core.queues.tasks()]
    assert before
    out = w.do(RevokeAsked(b"B", (1, 2, 3)))
    assert out == [GaveBack(b"B", [], [1, 2, 3])]
    assert [t.task_id for t in w.core.queues.tasks()] == before


# --- the scheduler's side --------------------------------------------------------------------


def task(task_id: int, depth: int = 0) -> Task:
    return Task(task_id, "f", [b"x"], ("*",), 1, 0, None, depth=depth)


def worker(link: str, slots: int = 1, seconds: float = 0.0) -> WorkerView:
    return WorkerView(link, link, "linux", PY, slots, task_seconds=seconds)


def scheduler(*workers: WorkerView, tasks: int = 0) -> Scheduler:
    s = Scheduler(PY)
    for w in workers:
        s.join(w)
    for i in range(tasks):
        s.add(task(i))
    return s


def test_a_task_given_back_leaves_its_worker_and_goes_where_it_was_asked_for() -> None:
    s = scheduler(worker("a"), tasks=5)
    s.assign()
    s.join(worker("b"))
    s.revoke("a", [3, 4, 77])  # (77: not on it; not asked)
    assert s.workers["a"].revoking == {3, 4}
    given = s.take_back("a", [4, 77], [3])
    assert [t.task_id for t in given] == [4] and given[0].link is None
    assert set(s.workers["a"].inflight) == {0, 1, 2, 3} and s.workers["a"].inflight_slots == 4
    assert not s.workers["a"].revoking
    assert s.place("b", given) == given and given[0].link == "b"
    assert len(s) == 5  # none lost, none twice


def test_an_answer_for_tasks_not_asked_back_changes_nothing() -> None:
    s = scheduler(worker("a"), tasks=3)
    s.assign()
    assert s.take_back("a", [0, 1], []) == [] and len(s.workers["a"].inflight) == 3
    s.revoke("a", [2])
    s.leave("a", clean=True)  # (its tasks went back to pending; a new connection of it
    # knows nothing)
    s.join(worker("a"))
    assert s.take_back("a", [2], []) == [] and len(s) == 3


def test_a_task_cancelled_while_asked_back_goes_nowhere() -> None:
    class Cancelled:
        def _is_pending(self) -> bool:
            return False

    s = scheduler(worker("a"), worker("b"), tasks=2)
    s.assign()
    s.revoke("a", [0])
    [given] = s.take_back("a", [0], [])
    given.response = Cancelled()
    assert s.place("b", [given]) == [] and not s.pending_for(s.workers["b"])


def test_a_task_for_a_worker_that_left_waits_for_any() -> None:
    s = scheduler(worker("a"), tasks=2)
    s.assign()
    s.revoke("a", [1])
    given = s.take_back("a", [1], [])
    assert s.place("gone", given) == [] and s.pending_for(s.workers["a"])
    assert len(s) == 2


# --- the policy ------------------------------------------------------------------------------


def test_a_worker_that_joins_takes_half_of_an_equal_workers_queue() -> None:
    s = scheduler(worker("a"), tasks=17)
    s.assign()
    s.join(worker("b"))
    moves = plan(s, Counter())
    assert len(moves) == 1 and moves[0].victim == "a" and moves[0].thief == "b"
    assert len(moves[0].task_ids) == 8
    assert moves[0].task_ids == list(range(9, 17))  # the last sent: the most likely queued


def test_a_slow_workers_queue_moves_in_proportion_to_speed() -> None:
    s = scheduler(worker("slow", seconds=0.3), worker("fast", seconds=0.1))
    for i in range(13):
        s.add(task(i))
    s.assign()
    fast = s.workers["fast"]
    for task_id in list(fast.inflight):
        s.finish("fast", task_id)
    slow = s.workers["slow"]
    n = len(slow.inflight)
    [move] = plan(s, Counter())
    k = len(move.task_ids)
    assert (move.victim, move.thief) == ("slow", "fast")
    # Both expected waits end close together: within one task of the slower.
    assert abs((n - k) * 0.3 - k * 0.1) <= 0.3


def test_a_slow_workers_queue_moves_before_the_others_run_dry() -> None:
    s = scheduler(worker("slow", seconds=0.3), worker("fast", seconds=0.1),
                  worker("other", seconds=0.1),
                  tasks=30)
    s.assign()  # (10 each: all three are busy, with queues)
    [first, second] = plan(s, Counter())
    assert {first.victim, second.victim} == {"slow"}
    assert {first.thief, second.thief} == {"fast", "other"}
    left = 10 - len(first.task_ids) - len(second.task_ids)
    assert left * 0.3 <= (10 + len(first.task_ids)) * 0.1 + 0.3


def test_nothing_moves_while_work_is_pending_or_no_slot_is_free() -> None:
    s = scheduler(worker("a"), worker("b"), tasks=40)
    s.assign()
    assert plan(s, Counter()) == []  # every slot busy, and tasks pending
    s2 = scheduler(worker("a"), tasks=40)
    s2.assign()
    s2.join(worker("b"))
    assert plan(s2, Counter()) == []  # b has a free slot, but pending tasks go to it


def test_tasks_on_their_way_count_as_held() -> None:
    s = scheduler(worker("a"), tasks=17)
    s.assign()
    s.join(worker("b"))
    [move] = plan(s, Counter({"b": 9}))
    assert len(move.task_ids) == 4  # (17 - 4 = 9 + 4)
    assert plan(s, Counter({"b": 16})) == []


def test_a_move_saving_less_than_its_round_trips_is_not_made() -> None:
    s = scheduler(worker("a", seconds=0.001), tasks=4)
    s.assign()
    s.join(worker("b", seconds=0.001))
    s.workers["a"].round_trip = s.workers["b"].round_trip = 0.01
    assert plan(s, Counter()) == []


def test_calls_made_inside_tasks_and_tasks_asked_back_stay() -> None:
    s = scheduler(worker("a"))
    for i in range(6):
        s.add(task(i, depth=1 if i >= 4 else 0))
    s.assign()
    s.revoke("a", [3])
    s.join(worker("b"))
    [move] = plan(s, Counter())
    assert move.task_ids == [1, 2]  # 5 and 4 are calls, 3 is asked back, 0 runs


def test_moves_remember_the_thief_until_the_victim_answers() -> None:
    s = scheduler(worker("a"), tasks=4)
    s.assign()
    moves = Moves()
    moves.add(Move("a", "b", [2, 3]))
    s.revoke("a", [2, 3])
    assert moves.incoming() == Counter({"b": 2})
    given = s.take_back("a", [3], [2])
    assert moves.answered("a", given, [2]) == {"b": given}
    assert moves.incoming() == Counter()
    moves.add(Move("a", "b", [1]))
    s.revoke("a", [1])
    s.leave("a")
    moves.prune(s)
    assert moves.asked == {}


def test_a_worker_offering_no_slot_neither_takes_nor_breaks_the_plan() -> None:
    s = scheduler(worker("a"), tasks=17)
    s.assign()
    s.join(WorkerView("none", "none", "linux", PY, 0))
    s.join(worker("b"))
    [move] = plan(s, Counter())
    assert move.thief == "b"

"""Many Mains on many one-slot workers, through the worker core alone (pure): each worker takes
the Mains in turns, and the workers' rounds are not all in the same order, so that at every
moment each Main holds about its share of all the slots, not all of them one after the other."""

from __future__ import annotations

from collections import Counter

from distrib.wire._messages import Outcome
from distrib.worker._core import Core
from distrib.worker._events import (
    DistReady, ExecutorReady, Kill, Spawn, TaskDone, TaskQueued, Turn)
from distrib.worker._state import SPARE_EXECUTORS, QueuedTask, Queues

MAINS = [f"M{i}".encode() for i in range(10)]


def qt(peer: bytes, task_id: int) -> QueuedTask:
    # (each Main's own context, as Mains' differ: a slot changing Mains changes executors)
    return QueuedTask(peer, task_id, "d", 1, None, [b"x"], context=peer.decode())


def turn(core: Core, now: float) -> None:
    """A turn; executors spawned in it are ready at once, and the turn after sends to them."""
    for action in core.handle(Turn(), now):
        if isinstance(action, Spawn):
            core.handle(ExecutorReady(action.ex_id), now)
    core.handle(Turn(), now)


def holders(cores: list[Core]) -> Counter[bytes]:
    """Slots each Main holds across ``cores``."""
    out: Counter[bytes] = Counter()
    for core in cores:
        out.update(core.held())
    return out


def rounds(spread: bool, workers: int = 20, per_worker: int = 3,
           warm: int = 0) -> list[Counter[bytes]]:
    """Ten Mains queue ``per_worker`` tasks each on every one-slot worker, all in the same
    order (Mains that start together); every worker then finishes its running task at the
    same moments. Returns the slots each Main holds at each moment, until all are done.
    Before that, ``warm`` rounds of a task per Main and worker, coming in that order too, to
    idle workers (the first starts at once, the others wait)."""
    cores = [Core(1, spread=i if spread else None) for i in range(workers)]
    ids = iter(range(1, 1 << 30))
    for core in cores:
        core.handle(DistReady("d"), 0.0)
    seen = []
    for tasks in [1] * warm + [per_worker]:
        for core in cores:
            for _ in range(tasks):
                for peer in MAINS:
                    core.handle(TaskQueued(qt(peer, next(ids))), 0.0)
                    turn(core, 0.0)  # (as the daemon takes each message)
        seen = []
        for step in range(1, len(MAINS) * tasks + 1):
            seen.append(holders(cores))
            for core in cores:
                ex = next(e for e in core.executors.values() if e.runs)
                core.handle(TaskDone(ex.ex_id, ex.runs[0].run_id, Outcome.OK, {}, []), step)
                turn(core, float(step))
        assert not any(core.running_any() or len(core.queues) for core in cores)
    return seen


def test_ten_mains_on_twenty_one_slot_workers_each_hold_about_a_tenth_at_every_moment() -> None:
    seen = rounds(spread=True)
    # Each worker serves the Mains in turns: over each round, one start each per worker.
    for r in range(0, len(seen), len(MAINS)):
        starts: Counter[bytes] = Counter()
        for moment in seen[r:r + len(MAINS)]:
            starts.update(moment)
        assert starts == dict.fromkeys(MAINS, 20), (r, starts)
    # And at every moment, about a tenth of the 20 slots each (2; a few more by chance), but
    # at the first: the first task to reach an idle worker starts there at once.
    assert seen[0] == {MAINS[0]: 20}
    assert max(max(moment.values()) for moment in seen[1:]) <= 7, seen
    assert min(len(moment) for moment in seen[1:]) >= 7  # (most Mains run at any moment)
    # So too after rounds in which every worker went idle and the Mains' tasks came in the
    # same order to each (a worker's round keeps its order, whatever order tasks come in).
    after = rounds(spread=True, warm=3)
    assert max(max(moment.values()) for moment in after[1:]) <= 7, after
    # In the order the Mains came on every worker, all the slots go to one Main at a time
    # (the last one waits a whole round for its first start): what the spread is for.
    assert all(list(moment.values()) == [20] for moment in rounds(spread=False))


def test_a_main_joins_the_round_at_a_place_of_the_workers_own_and_keeps_it() -> None:
    orders = set()
    for seed in range(20):
        q = Queues(spread=seed)
        for peer in MAINS:
            for task_id in range(3):
                q.add(qt(peer, task_id))
        picks = [t.peer for _ in range(30) if (t := q.next_runnable(1, lambda t: True))]
        first = picks[:len(MAINS)]
        assert sorted(first) == MAINS  # one turn each per round, in the same order each round
        assert picks == first * 3
        orders.add(tuple(first))
    assert len(orders) == 20  # (every worker's order its own)


def serve(peers: list[bytes], rounds: int = 3) -> tuple[list[str], int, int]:
    """A one-slot core serving ``rounds`` tasks of each of ``peers``, one at a time: the
    contexts of the executors it started, how many it stopped, the most it held at once."""
    core = Core(1)
    core.handle(DistReady("d"), 0.0)
    ids = iter(range(1, 1 << 30))
    for _ in range(rounds):
        for peer in peers:
            core.handle(TaskQueued(qt(peer, next(ids))), 0.0)
    started: list[str] = []
    kills = most = 0
    for step in range(rounds * len(peers)):
        for action in core.handle(Turn(), float(step)):
            kills += isinstance(action, Kill)
            if isinstance(action, Spawn):
                started.append(action.key.context)
                core.handle(ExecutorReady(action.ex_id), float(step))
        core.handle(Turn(), float(step))
        most = max(most, len(core.executors))
        ex = next(e for e in core.executors.values() if e.runs)
        core.handle(TaskDone(ex.ex_id, ex.runs[0].run_id, Outcome.OK, {}, []), step + 0.5)
    return started, kills, most


def test_a_one_slot_worker_keeps_an_idle_executor_per_main_waiting_for_its_turn() -> None:
    # Ten Mains: an executor each, started once, not one at each of their turns.
    started, kills, most = serve(MAINS)
    assert sorted(started) == sorted(p.decode() for p in MAINS) and kills == 0 and most == 10
    # Past SPARE_EXECUTORS idle ones, executors change Mains at their turns, as before.
    many = MAINS + [f"N{i}".encode() for i in range(SPARE_EXECUTORS)]
    started, kills, most = serve(many)
    assert most == 1 + SPARE_EXECUTORS and len(started) > len(many) and kills > 0

"""Work that moves to where the slots are: which tasks queued on a worker the Main takes back,
and for which worker, when another would start them sooner and nothing waits for it here.

Pure: no sockets and no clock. The I/O loop asks ``plan`` at each tick, sends each move's
``Revoke`` to its victim, and, once the victim answers which tasks it gave back (the others
had started there: they stay), places those on the move's thief (``Moves`` remembers which).

The policy (see docs/design.md, "Work that moves"): a worker's expected wait is the tasks it
holds times its time per task over its slots (``task_seconds``, as its results say; a worker
without a result yet counts as a typical one). Once nothing is pending for it, the worker
whose wait is shortest takes from the one whose wait is longest as many queued tasks as make
their two waits equal, if that saves more than the move costs (the two links' round trips);
then the next shortest from the next longest. A worker that joins, frees up or turns out
faster is the shortest wait; a slow one's queue goes as soon as its first results say so.
"""

from __future__ import annotations

import heapq
from collections import Counter

from msgspec import Struct

from distrib.main._scheduler import Scheduler
from distrib.main._tracked import Task, WorkerView

MIN_GAIN = 0.005  # seconds a move must save beyond the round trips it costs


class Move(Struct, frozen=True):
    """Ask ``victim`` for these tasks back, for ``thief``."""

    victim: str
    thief: str
    task_ids: list[int]


class Moves:
    """The moves asked and not yet answered: task id -> (victim, thief)."""

    def __init__(self) -> None:
        self.asked: dict[int, tuple[str, str]] = {}

    def incoming(self) -> Counter[str]:
        """Tasks on their way to each thief."""
        return Counter(thief for _, thief in self.asked.values())

    def add(self, move: Move) -> None:
        for task_id in move.task_ids:
            self.asked[task_id] = (move.victim, move.thief)

    def answered(self, victim: str, given: list[Task], kept: list[int]) -> dict[str, list[Task]]:
        """The victim answered: the tasks it gave back, grouped by the thief each goes to."""
        out: dict[str, list[Task]] = {}
        for task in given:
            asked = self.asked.pop(task.task_id, None)
            if asked is not None and asked[0] == victim:
                out.setdefault(asked[1], []).append(task)
            else:  # (not asked by a move: it waits for any worker)
                out.setdefault("", []).append(task)
        for task_id in kept:
            if self.asked.get(task_id, ("", ""))[0] == victim:
                del self.asked[task_id]
        return out

    def prune(self, scheduler: Scheduler) -> None:
        """Forget moves whose victim left (its tasks went back to the queue with it)."""
        for task_id, (victim, _) in list(self.asked.items()):
            worker = scheduler.workers.get(victim)
            if worker is None or task_id not in worker.revoking:
                del self.asked[task_id]


def plan(scheduler: Scheduler, incoming: Counter[str]) -> list[Move]:
    """The moves to ask for now (at most one per thief); [] when no worker holds tasks queued
    beyond its slots (the common case: one pass over the workers)."""
    workers = list(scheduler.workers.values())
    queued = {w.link: len(w.inflight) - len(w.revoking) - w.slots for w in workers}
    if not any(n > 0 for n in queued.values()):
        return []
    known = sorted(w.task_seconds for w in workers if w.task_seconds > 0)
    typical = known[len(known) // 2] if known else 1.0

    def per_slot(w: WorkerView) -> float:
        return (w.task_seconds or typical) / max(w.slots, 1)

    held = {w.link: len(w.inflight) - len(w.revoking) + incoming[w.link] for w in workers}
    victims = [(-held[w.link] * per_slot(w), w.link) for w in workers if queued[w.link] > 0]
    heapq.heapify(victims)
    thieves = sorted((w for w in workers if not w.full and not w.unable and not w.paused
                      and not scheduler.pending_for(w)),
                     key=lambda w: held[w.link] * per_slot(w))  # (the soonest free first)
    moves: list[Move] = []
    for thief in thieves:
        if not victims:
            break
        _, link = heapq.heappop(victims)
        victim = scheduler.workers[link]
        if victim is thief:  # (it would wait the longest itself: no one is worse off)
            break
        a_v, a_t = per_slot(victim), per_slot(thief)
        n_v, n_t = held[link], held[thief.link]
        # Equal waits after the move: (n_v - k) a_v = (n_t + k) a_t.
        k = min(int((n_v * a_v - n_t * a_t) / (a_v + a_t)), queued[link],
                scheduler.depth(thief) - n_t)
        saved = n_v * a_v - (n_t + 1) * a_t
        if k >= 1 and saved > 2 * (victim.round_trip + thief.round_trip) + MIN_GAIN:
            ids = _movable(victim, thief, scheduler.python, k)
            if ids:
                moves.append(Move(link, thief.link, ids))
                held[link] -= len(ids)
                held[thief.link] += len(ids)
                queued[link] -= len(ids)
        if queued[link] > 0:
            heapq.heappush(victims, (-held[link] * a_v, link))
    return moves


def _movable(victim: WorkerView, thief: WorkerView, python: str, most: int) -> list[int]:
    """Up to ``most`` of the victim's tasks likely queued there (the last sent, in the order
    sent; its first ``slots`` are taken to be running), that the thief can run, not asked back
    already, not running in two copies (``speculative``) and not calls made inside tasks (they
    may be what a waiting task waits for)."""
    out: list[int] = []
    for task in reversed(victim.inflight.values()):
        if len(out) >= most:
            break
        if (task.task_id not in victim.revoking and not task.depth and not task.copied
                and task.task_id not in victim.parked
                and thief.can_run(task.requirement, python)):
            out.append(task.task_id)
    out.reverse()  # (they run in the order they were sent)
    return out

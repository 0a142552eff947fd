"""The scheduler's index of workers by rank: where the next task of a requirement goes, in
O(log workers).

Each requirement (platforms, threads, memory) has a heap of the workers able to take its
tasks, ranked as a scan of every worker would choose: free slots first (the task starts at
once), then room in the queue, ties to the worker that joined first. A worker whose rank
changes is ``touch``-ed (``WorkerView`` does it when a field of ``RANKED`` is set): it gets a
new stamp, so its entries are stale, and it is pushed again before the next ``top``. Stale
entries are dropped as they reach the top, or all at once when a heap holds twice its
workers (amortized O(1) a push); when a quarter of the workers or more moved at once (a tick),
the heaps are built anew, O(workers).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

# (platform globs, threads, memory: a worker's limit must be above it, or none; 0: any)
Requirement = tuple[tuple[str, ...], int, int]
# A worker's entry: (-free slots, -room in its queue, join order, stamp, link)
Rank = tuple[int, int, int, int, str]


class Ranked(Protocol):
    """What ranks a worker (``_tracked.WorkerView``)."""

    link: str
    slots: int
    inflight_slots: int
    lent: int
    stamp: int  # its rank's version: entries of an older one are stale


Worker = TypeVar("Worker", bound=Ranked)


class Ranks(Generic[Worker]):
    """Heaps of the able workers, one per requirement, over the scheduler's ``workers``."""

    def __init__(self, workers: dict[str, Worker],
                 able: Callable[[Worker, Requirement], bool],
                 depth: Callable[[Worker], int]) -> None:
        self.workers = workers  # (the scheduler's own: joins and departures show here)
        self.able = able
        self.depth = depth
        self.heaps: dict[Requirement, list[Rank]] = {}
        self.touched: set[Worker] = set()  # to push again before the next ``top``
        self.order: dict[str, int] = {}  # link -> join order: ties go to the earliest
        self._joins = itertools.count()
        self._stamps = itertools.count(1)

    def joined(self, worker: Worker) -> None:
        """``worker`` is joining (before it is in ``workers``)."""
        if worker.link not in self.workers:
            self.order[worker.link] = next(self._joins)
        self.touch(worker)

    def left(self, link: str) -> None:
        """The worker of ``link`` left ``workers``: its entries are stale."""
        del self.order[link]

    def touch(self, worker: Worker) -> None:
        worker.stamp = next(self._stamps)
        self.touched.add(worker)

    def top(self, req: Requirement) -> Worker | None:
        """The best able worker for a task of ``req``, dropping the stale entries above it."""
        heap = self.heaps.get(req)
        if heap is None:
            heap = self.heaps[req] = []
            self._rerank(req, heap)
        self.rank_touched()
        while heap:
            stamp, link = heap[0][3], heap[0][4]
            worker = self.workers.get(link)
            if worker is not None and worker.stamp == stamp:
                return worker
            heapq.heappop(heap)
        return None

    def rank_touched(self) -> None:
        """Push the touched workers' new ranks (all heaps built anew if a quarter moved)."""
        touched = self.touched
        if not touched:
            return
        if len(touched) > 16 and 4 * len(touched) > len(self.workers):
            for req, heap in self.heaps.items():
                self._rerank(req, heap)
        else:
            limit = 2 * len(self.workers) + 16
            for worker in touched:
                if self.workers.get(worker.link) is not worker:
                    continue  # gone
                for req, heap in self.heaps.items():
                    if self.able(worker, req):
                        heapq.heappush(heap, self._rank(worker))
                        if len(heap) > limit:  # mostly stale: drop them all
                            self._rerank(req, heap)
        touched.clear()

    def _rank(self, worker: Worker) -> Rank:
        free = worker.slots - worker.inflight_slots + worker.lent
        room = self.depth(worker) - worker.inflight_slots + worker.lent
        return (-free, -room, self.order[worker.link], worker.stamp, worker.link)

    def _rerank(self, req: Requirement, heap: list[Rank]) -> None:
        """Fill ``heap`` anew with the workers able to take ``req``'s tasks now: O(workers)."""
        heap[:] = [self._rank(w) for w in self.workers.values() if self.able(w, req)]
        heapq.heapify(heap)

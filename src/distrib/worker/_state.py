"""The worker's queues, pure: tasks per Main, and a fair choice of what runs next.

No sockets, no processes, no clock: the daemon feeds it tasks and asks what to start when
slots free up. Mains are served round-robin, so one Main's deep queue cannot starve another.

The next turn goes to the Main that had the fewest here (a Main whose queue was empty comes
back with as many as the Main served last: no turns are saved up), then by its place, drawn
at random when it first came (``spread``, seeded by the daemon; without it, in the order they
came). Mains that start together reach every worker in the same order: in that order on
every worker, the rounds would give all slots at once to one Main after the other (the last
waiting a whole round for its first start), fair only over whole rounds.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable, Container, Set as AbstractSet
from typing import Any, Protocol, TypeVar

from msgspec import Struct


SPARE_EXECUTORS = 16  # idle executors kept beyond the slots for tasks waiting for their turn


class _Keyed(Protocol):
    key: Any  # its environment (``EnvKey``): dist, threads, context


_E = TypeVar("_E", bound=_Keyed)


class QueuedTask(Struct, eq=False):
    """A task as the worker holds it: who sent it, what it needs, its opaque payload."""

    peer: bytes  # the Main's routing id
    task_id: int
    dist: str
    threads: int
    timeout: float | None
    frames: list[Any]
    context: str = ""  # its Main's argv, variables and environment (hashed): executors are
    # per context
    env: str = ""  # the Python environment it runs in, while that is not built ("": ready)
    objects: tuple[str, ...] = ()  # the shared objects its call passes
    waits: AbstractSet[str] = frozenset()  # of those, the ones not here yet
    shm: dict[str, int] | None = None  # its frames in /dev/shm: name -> index
    depth: int = 0  # a call made inside a task: how deep (deeper ones go first)
    reply: bytes = b""  # where its outcome goes, when not to ``peer`` (whose share it counts
    # in): a worker that sent it for that Main, or this worker's own (``_direct.LOCAL``)
    reply_id: int = 0  # its id there
    nbytes: int = 0  # payload size, for prefetch decisions (set from its frames)

    def __post_init__(self) -> None:
        self.nbytes = sum(memoryview(f).nbytes for f in self.frames)

    def __repr__(self) -> str:  # (its frames may be a gibibyte: they are not shown)
        return f"QueuedTask({self.task_id}, peer={self.peer.hex()[:8]}, {self.nbytes} bytes)"


class Queues:
    """Per-Main FIFO queues with round-robin selection among Mains (see the docstring)."""

    def __init__(self, spread: int | None = None) -> None:
        self._by_peer: dict[bytes, deque[QueuedTask]] = {}
        self._turns: dict[bytes, int] = {}  # turns each Main had here (see the docstring)
        self._place: dict[bytes, float] = {}  # its place among Mains with as many turns
        self._served = 0  # the turns the Main served last had before it
        self._spread = None if spread is None else random.Random(spread)
        self._bytes: dict[bytes, int] = {}  # payload bytes queued per Main

    def __len__(self) -> int:
        return sum(len(q) for q in self._by_peer.values())

    def count(self, peer: bytes) -> int:
        return len(self._by_peer.get(peer, ()))

    def queued_bytes(self, peer: bytes) -> int:
        """Payload bytes of ``peer``'s queued tasks."""
        return self._bytes.get(peer, 0)

    def _took(self, task: QueuedTask) -> None:
        self._bytes[task.peer] -= task.nbytes

    def add(self, task: QueuedTask) -> None:
        """Queue a task: after its Main's others, but a call made inside a task before the
        shallower ones (depth first: the tasks waiting for it finish first)."""
        queue = self._by_peer.get(task.peer)
        if queue is None:
            queue = self._by_peer[task.peer] = deque()
            self._place[task.peer] = self._spread.random() if self._spread else len(self._place)
        if not queue:
            self._turns[task.peer] = max(self._turns.get(task.peer, 0), self._served)
        if task.depth and queue and queue[-1].depth < task.depth:
            at = next(i for i, t in enumerate(queue) if t.depth < task.depth)
            queue.insert(at, task)
        else:
            queue.append(task)
        self._bytes[task.peer] = self._bytes.get(task.peer, 0) + task.nbytes

    def add_front(self, task: QueuedTask) -> None:
        """Put a task back at the head of its Main's queue (its executor was stopped)."""
        self.add(task)
        queue = self._by_peer[task.peer]
        queue.remove(task)
        queue.appendleft(task)

    def remove(self, peer: bytes, task_id: int) -> QueuedTask | None:
        """Withdraw one queued task; None if it is not queued (running, done or unknown)."""
        queue = self._by_peer.get(peer)
        if queue is None:
            return None
        for task in queue:
            if task.task_id == task_id:
                queue.remove(task)
                self._took(task)
                return task
        return None

    def drop_peer(self, peer: bytes) -> list[QueuedTask]:
        """Forget a Main: return its queued tasks."""
        queue = self._by_peer.pop(peer, deque())
        self._bytes.pop(peer, None)
        self._turns.pop(peer, None)
        self._place.pop(peer, None)
        return list(queue)

    def take_where(self, pred: Callable[[QueuedTask], bool]) -> list[QueuedTask]:
        """Remove and return every queued task matching ``pred`` (e.g. of a failed dist)."""
        taken: list[QueuedTask] = []
        for peer, queue in self._by_peer.items():
            keep = deque(t for t in queue if not pred(t))
            if len(keep) != len(queue):
                taken.extend(t for t in queue if pred(t))
                self._by_peer[peer] = keep
        for task in taken:
            self._took(task)
        return taken

    def peers(self) -> list[bytes]:
        """Mains with queued tasks."""
        return [peer for peer, queue in self._by_peer.items() if queue]

    def tasks(self) -> list[QueuedTask]:
        """Every queued task."""
        return [t for queue in self._by_peer.values() for t in queue]

    def dists(self) -> set[str]:
        """Distributions of the queued tasks."""
        return {t.dist for queue in self._by_peer.values() for t in queue}

    def spare(self, idle: list[_E], over: int) -> _E | None:
        """Which of the ``idle`` executors stops to make room for a new one, ``over`` being
        how many there are beyond the slots (None: none stops). One of an environment that no
        Main's next tasks want; one that some want only past SPARE_EXECUTORS beyond the slots:
        else each turn between Mains (their contexts differ: an executor each) on a small
        worker would stop an executor and fork another."""
        if over < 0 or not idle:
            return None
        wanted = {(t.dist, t.threads, t.context) for queue in self._by_peer.values()
                  for t in itertools.islice(queue, 8)}
        unused = [e for e in idle if (e.key.dist, e.key.threads, e.key.context) not in wanted]
        return unused[0] if unused else idle[0] if over >= SPARE_EXECUTORS else None

    def waiting_peers(self, runnable: Callable[[QueuedTask], bool]) -> list[bytes]:
        """Mains with a queued task that could start now (its environment is ready)."""
        return [peer for peer, queue in self._by_peer.items()
                if any(runnable(t) for t in queue)]

    def first_peer_with(self, dist: str) -> bytes | None:
        """A Main with a queued task of distribution ``dist``, if any."""
        for peer, queue in self._by_peer.items():
            if any(t.dist == dist for t in queue):
                return peer
        return None

    def next_runnable(self, free: int, runnable: Callable[[QueuedTask], bool],
                      held: dict[bytes, int] | None = None,
                      limits: dict[bytes, int] | None = None,
                      weights: dict[bytes, float] | None = None,
                      accounts: dict[bytes, bytes] | None = None,
                      skip: Container[bytes] = ()) -> QueuedTask | None:
        """Pop the next task to start on ``free`` slots: from the account holding the fewest
        slots for its weight (``held``, ``limits`` and ``weights`` are per account; a Main's
        account is ``accounts[peer]``, else the Main itself; weighted max-min fair), Mains
        holding as many taking turns; never one that would pass its account's quota.

        Within one Main's queue the first task that fits and is ``runnable`` (its environment
        is ready) goes; tasks behind an unready environment are not held up by it. None of
        the Mains in ``skip`` goes.
        """
        holds: dict[bytes, int] = held or {}
        of: dict[bytes, bytes] = accounts or {}
        turns, place = self._turns, self._place
        if len(self._by_peer) == 1:  # one Main (the hot path of tiny tasks): no ordering to do
            peers: Any = self._by_peer
        elif holds:
            weight = weights or {}

            def share(peer: bytes) -> tuple[float, int, float]:
                account = of.get(peer, peer)
                return holds.get(account, 0) / weight.get(account, 1.0), turns[peer], place[peer]

            peers = sorted(self._by_peer, key=share)
        else:
            peers = sorted(self._by_peer, key=lambda p: (turns[p], place[p]))
        for peer in peers:
            if peer in skip:
                continue
            queue = self._by_peer[peer]
            room = free
            if limits:
                account = of.get(peer, peer)
                if account in limits:
                    room = min(free, limits[account] - holds.get(account, 0))
            for task in queue:
                if task.threads <= room and runnable(task):
                    queue.remove(task)
                    self._took(task)
                    self._served = turns[peer]
                    turns[peer] += 1
                    return task
        return None

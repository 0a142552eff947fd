"""Which queued tasks may start while tasks here wait for their own calls (pure): the depth
rules that keep tasks waiting for calls from holding every slot, with none left to run the
calls (``CoreState._schedule`` applies them).

A task that calls and waits parks: its slots go to other tasks, up to ``max_parked``
executors parked; past that, a task that calls waits holding its slots (it is *blocked*).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Protocol, TypeVar

PARK_GRACE = 0.05  # seconds a parked task's slots go only to deeper tasks (see depth_floor)


class _Task(Protocol):
    @property
    def peer(self) -> bytes: ...

    @property
    def depth(self) -> int: ...

    @property
    def threads(self) -> int: ...


class _Run(Protocol):
    @property
    def task(self) -> _Task: ...


class _Executor(Protocol):
    @property
    def runs(self) -> Sequence[_Run]: ...

    @property
    def parked(self) -> bool: ...

    @property
    def blocked(self) -> bool: ...

    @property
    def parked_at(self) -> float: ...


def depth_floor(executors: Iterable[_Executor], max_parked: int, now: float
                ) -> Callable[[bytes], int] | None:
    """Per Main, only its tasks deeper than this may start now (None: any, for all), so
    that tasks waiting for their calls never take every slot:

    - a task that parked in the last ``PARK_GRACE`` seconds lends its slots to deeper tasks
      of its Main (its own calls, relayed through its Main, arrive within that time), not to
      tasks of its depth (or shallower), which would call and wait in turn;
    - with ``max_parked`` executors parked, a task that called and waits would keep its
      slots: only tasks deeper than every waiting one start, of any Main (the deepest calls
      are the ones that do not call again), and shallower ones once a parked task is done."""
    waiting = [ex for ex in executors if ex.runs and (ex.parked or ex.blocked)]
    if not waiting:
        return None
    floors: dict[bytes, int] = {}
    for ex in waiting:
        if ex.parked and now - ex.parked_at < PARK_GRACE:
            peer, depth = ex.runs[0].task.peer, ex.runs[0].task.depth
            floors[peer] = max(floors.get(peer, -1), depth)
    cap = -1
    if sum(ex.parked for ex in waiting) >= max_parked:
        cap = max(ex.runs[0].task.depth for ex in waiting)
    if not floors and cap < 0:
        return None
    return lambda peer: max(floors.get(peer, -1), cap)


def last_slot_depth(executors: Collection[_Executor], max_parked: int) -> int | None:
    """With ``max_parked`` executors parked, the depth of the deepest task holding slots here
    (running, or waiting holding them); None below the cap.

    Then the last free slot goes only to a task deeper than that (``last_slot_rule``): taken
    by one that calls and waits too, every slot could end up held by tasks waiting for calls
    that no slot is left to run. Seen under load: four tasks of one depth were started on a
    4-slot worker before the first of them called, and each then waited holding its slot.
    The depth floor alone cannot see it: it knows only the tasks that wait already."""
    if sum(ex.parked for ex in executors if ex.runs) < max_parked:
        return None
    return max((ex.runs[0].task.depth for ex in executors if ex.runs and not ex.parked),
               default=-1)


T = TypeVar("T", bound=_Task)


def last_slot_rule(runnable: Callable[[T], bool], free: int, deepest: int
                   ) -> Callable[[T], bool]:
    """``runnable``, and for a task that would take the last of ``free`` slots, deeper than
    ``deepest`` (see ``last_slot_depth``)."""
    return lambda t: (free - t.threads >= 1 or t.depth > deepest) and runnable(t)

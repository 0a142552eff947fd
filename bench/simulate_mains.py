"""Several Mains on the same workers, simulated: each Main's share of the slots.

    .venv/bin/python -m bench.simulate_mains [--workers 100] [--mains 10] [--tasks 1000]
                                             [--seconds 1] [--spawn 0.02] [--seeds 3]
                                             [--no-spread]

Every Main is the real ``Scheduler`` with its moves (``_rebalance.plan``), driven as its I/O
loop drives it (results read, a tick every 0.2 s: ``observe`` then ``rebalance``, placement);
every worker is the real worker core (``worker/_core.Core``, pure) with one slot. What is
simulated: the network (a one-way delay of 0.25-2.5 ms per worker), executors (one per Main's
environment, as each Main's context differs; one starts in ``--spawn`` seconds, a task runs
``--seconds`` x 0.9-1.1) and the clock. As in ``bench.scale mains``: every Main first runs a
warm round (a task per worker), then all submit together, the first Main half as many tasks
as the others; the shares are each Main's slot-seconds from the moment they submit to the
first Main's last end (``bench.scale.shares``). ``--no-spread``: every worker's round of
Mains in the order they came, as before each worker drew an order of its own
(``worker/_state``).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from distrib.main._rebalance import Moves, plan
from distrib.main._scheduler import Scheduler
from distrib.main._tracked import Task, WorkerView
from distrib.wire._messages import Outcome
from distrib.worker._core import Core
from distrib.worker._events import (
    DistReady, EnvKey, ExecutorReady, GaveBack, Kill, Report, RevokeAsked, Send, Skip, Spawn,
    TaskDone, TaskQueued, TaskSkipped, Tick, Turn)
from distrib.worker._state import QueuedTask

from bench.simulate import LATENCY, PLATFORMS, TICK

# event kinds, in the order they are taken at one instant
DONE, READY, AT_WORKER, AT_MAIN, TICKED = range(5)


@dataclass(eq=False)
class SimExecutor:
    """An executor process: the runs sent to it, the first one running once it is ready."""

    ready: bool = False
    runs: deque[int] = field(default_factory=deque)  # run ids, in order
    running: int = 0  # the run id running (0: none)


@dataclass(eq=False)
class SimWorker:
    """A worker daemon: its real core and simulated executors."""

    name: str
    latency: float  # one way to every Main, seconds
    core: Core
    executors: dict[int, SimExecutor] = field(default_factory=dict)
    tasks: dict[int, QueuedTask] = field(default_factory=dict)  # run id -> its task
    turns: Counter[bytes] = field(default_factory=Counter)  # tasks started, per Main
    spawned: int = 0  # executors started


@dataclass(eq=False)
class SimMain:
    """A Main: its real scheduler and moves, and its tasks."""

    name: str
    peer: bytes
    sched: Scheduler
    moves: Moves = field(default_factory=Moves)
    tasks: dict[int, Task] = field(default_factory=dict)
    done: int = 0
    submitted: int = 0


class MainsSimulation:
    """``mains`` Mains on ``workers`` one-slot workers, on a virtual clock."""

    def __init__(self, workers: int, mains: int, seconds: float = 1.0, spawn: float = 0.02,
                 seed: int = 1, spread: bool = True) -> None:
        self.rng = random.Random(seed)
        self.seconds, self.spawn = seconds, spawn
        self.events: list[tuple[float, int, int, Any]] = []
        self.seq = itertools.count()
        self.now = 0.0
        self.ids = itertools.count(1)
        self.log: list[tuple[str, float, float, str]] = []  # (Main, start, end, worker)
        self.starts: dict[tuple[str, int], float] = {}  # (worker, run id) -> when it started
        self.workers = {f"w{i}": SimWorker(f"w{i}", self.rng.uniform(*LATENCY), Core(
            1, spread=self.rng.getrandbits(64) if spread else None)) for i in range(workers)}
        self.mains = [SimMain(f"M{i}", f"M{i}".encode(), Scheduler("3.11"))
                      for i in range(mains)]
        for w in self.workers.values():
            w.core.handle(DistReady("d"), 0.0)
            for m in self.mains:
                view = WorkerView(w.name, w.name, "linux-x86_64", "3.11", 1)
                view.round_trip = 2 * w.latency
                m.sched.join(view)
        self._push(TICK, TICKED, None)

    def _push(self, at: float, kind: int, payload: Any) -> None:
        heapq.heappush(self.events, (at, kind, next(self.seq), payload))

    # --- the Mains -------------------------------------------------------------------------

    def submit(self, main: SimMain, n: int) -> None:
        for _ in range(n):
            task = Task(next(self.ids), "nap", [], PLATFORMS, 1, 0, None)
            main.tasks[task.task_id] = task
            main.sched.add(task)
        main.submitted += n
        self._place(main)

    def _place(self, main: SimMain) -> None:
        for link, tasks in main.sched.assign().items():
            self._send(main, link, tasks)

    def _send(self, main: SimMain, link: str, tasks: list[Task]) -> None:
        w = self.workers[link]
        for task in tasks:
            queued = QueuedTask(main.peer, task.task_id, "d", 1, None, [], context=main.name)
            self._push(self.now + w.latency, AT_WORKER, (w, TaskQueued(queued)))

    def _at_main(self, main: SimMain, link: str, what: Any) -> None:
        if isinstance(what, GaveBack):
            given = main.sched.take_back(link, what.given, what.kept)
            for thief, tasks in main.moves.answered(link, given, what.kept).items():
                self._send(main, thief, main.sched.place(thief, tasks))
        else:  # a result: (task id, seconds it ran)
            task_id, ran = what
            if main.sched.finish(link, task_id) is not None:
                main.sched.ran(link, ran)
                main.done += 1
        self._place(main)

    def _tick(self) -> None:
        for main in self.mains:
            main.sched.observe(TICK)
            main.moves.prune(main.sched)
            for move in plan(main.sched, main.moves.incoming()):
                main.sched.revoke(move.victim, move.task_ids)
                main.moves.add(move)
                w = self.workers[move.victim]
                self._push(self.now + w.latency, AT_WORKER,
                           (w, RevokeAsked(main.peer, tuple(move.task_ids))))
            self._place(main)
        for w in self.workers.values():
            self._apply(w, w.core.handle(Tick(), self.now))

    # --- the workers -----------------------------------------------------------------------

    def _apply(self, w: SimWorker, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Spawn):
                w.spawned += 1
                w.executors[action.ex_id] = SimExecutor()
                self._push(self.now + self.spawn, READY, (w, action.ex_id))
            elif isinstance(action, Send):
                ex = w.executors[action.ex_id]
                for run in action.runs:
                    w.tasks[run.run_id] = run.task
                    ex.runs.append(run.run_id)
                self._next(w, action.ex_id)
            elif isinstance(action, Skip):
                held = w.executors.get(action.ex_id)
                if held is not None and action.run_id in held.runs and (
                        held.running != action.run_id):
                    held.runs.remove(action.run_id)
                    self._apply(w, w.core.handle(TaskSkipped(action.ex_id, action.run_id),
                                                 self.now))
            elif isinstance(action, Kill):
                w.executors.pop(action.ex_id, None)
            elif isinstance(action, Report):
                main = self.mains[int(action.task.peer[1:])]
                ran = self.now - self.starts.get((w.name, action.task.task_id), self.now)
                self._push(self.now + w.latency, AT_MAIN,
                           (main, w.name, (action.task.task_id, ran)))
            elif isinstance(action, GaveBack):
                main = self.mains[int(action.peer[1:])]
                self._push(self.now + w.latency, AT_MAIN, (main, w.name, action))

    def _next(self, w: SimWorker, ex_id: int) -> None:
        """The executor starts its next run if it is ready and free."""
        ex = w.executors.get(ex_id)
        if ex is None or not ex.ready or ex.running or not ex.runs:
            return
        run_id = ex.runs[0]
        task = w.tasks[run_id]
        ex.running = run_id
        w.turns[task.peer] += 1
        self.starts[(w.name, task.task_id)] = self.now
        took = self.seconds * self.rng.uniform(0.9, 1.1)
        self._push(self.now + took, DONE, (w, ex_id, run_id))

    def _done(self, w: SimWorker, ex_id: int, run_id: int) -> None:
        ex = w.executors.get(ex_id)
        if ex is None or ex.running != run_id:
            return
        ex.running = 0
        ex.runs.popleft()
        task = w.tasks.pop(run_id)
        self.log.append((task.peer.decode(), self.starts[(w.name, task.task_id)], self.now,
                         w.name))
        self._apply(w, w.core.handle(TaskDone(ex_id, run_id, Outcome.OK, {}, []), self.now))
        self._apply(w, w.core.handle(Turn(), self.now))
        self._next(w, ex_id)

    # --- the clock -------------------------------------------------------------------------

    def run(self, until: Any) -> None:
        """Take events until ``until()`` holds."""
        while self.events and not until():
            self.now, kind, _, payload = heapq.heappop(self.events)
            if kind == DONE:
                self._done(*payload)
            elif kind == READY:
                w, ex_id = payload
                ex = w.executors.get(ex_id)
                if ex is not None:
                    ex.ready = True
                    self._apply(w, w.core.handle(ExecutorReady(ex_id), self.now))
                    self._apply(w, w.core.handle(Turn(), self.now))
                    self._next(w, ex_id)
            elif kind == AT_WORKER:
                w, event = payload
                self._apply(w, w.core.handle(event, self.now))
                self._apply(w, w.core.handle(Turn(), self.now))
            elif kind == AT_MAIN:
                self._at_main(*payload)
            else:
                self._tick()
                self._push(self.now + TICK, TICKED, None)


@dataclass
class Run:
    shares: dict[str, float]  # per Main, of the slot-seconds while all want more
    busy: float  # slot-seconds over the slots' seconds in that window
    spawned: float  # executors started after the warm round, per task
    log: list[tuple[str, float, float, str]]  # (Main, start, end, worker) of each task


def simulate(workers: int, mains: int, tasks: int, seconds: float = 1.0, spawn: float = 0.02,
             seed: int = 1, spread: bool = True) -> Run:
    """Each Main's share (see the module's docstring), and how busy the slots were."""
    from bench.scale import shares

    sim = MainsSimulation(workers, mains, seconds, spawn, seed, spread)
    for main in sim.mains:  # the warm round: a task per worker, one Main after the other
        sim.submit(main, workers)
    sim.run(lambda: all(m.done == m.submitted for m in sim.mains))
    sim.log.clear()
    spawned = sum(w.spawned for w in sim.workers.values())
    since = sim.now
    for i, main in enumerate(sim.mains):
        sim.submit(main, tasks // 2 if i == 0 else tasks)
    sim.run(lambda: all(m.done == m.submitted for m in sim.mains))
    runs = [(who, s, e) for who, s, e, _ in sim.log]
    got, lo, hi = shares(runs, [m.name for m in sim.mains], since)
    held = sum(max(0.0, min(e, hi) - max(s, lo)) for _, s, e in runs)
    spawned = sum(w.spawned for w in sim.workers.values()) - spawned
    return Run(got, held / (workers * (hi - lo)), spawned / len(runs), sim.log)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate_mains", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--mains", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=None,
                        help="tasks per Main (default: 100 per worker over the Mains: ten "
                        "rounds of the Mains on each worker)")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--spawn", type=float, default=0.02,
                        help="seconds an executor takes to start (default 0.02)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-spread", action="store_true",
                        help="every worker's round of Mains in the order they reached it, as "
                        "before the round was spread (``worker/_state``)")
    a = parser.parse_args(argv)
    tasks = a.tasks or 100 * a.workers // a.mains
    print(f"Simulated: {a.mains} Mains on {a.workers} one-slot workers, {tasks} x "
          f"{a.seconds:g} s each (the first Main half), executors start in {a.spawn:g} s, "
          f"{'every worker takes the Mains in the order they came' if a.no_spread else 'each worker takes the Mains in an order of its own'}; "
          f"share of the slot-seconds while all want more (fair: {1 / a.mains:.3f})\n")
    names = [f"M{i}" for i in range(a.mains)]
    print("| seed | " + " | ".join(names) + " | worst off | slots busy | executors "
          "started per task |")
    print("|---:|" + "---:|" * (a.mains + 3))
    for seed in range(1, a.seeds + 1):
        out = simulate(a.workers, a.mains, tasks, a.seconds, a.spawn, seed, not a.no_spread)
        worst = max(abs(s * a.mains - 1) for s in out.shares.values())
        print(f"| {seed} | " + " | ".join(f"{out.shares[n]:.3f}" for n in names)
              + f" | **{worst:.1%}** | {out.busy:.3f} | {out.spawned:.3f} |", flush=True)


if __name__ == "__main__":
    main()

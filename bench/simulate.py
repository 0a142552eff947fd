"""Beyond this machine, simulated: the Main's scheduler placing millions of tasks on thousands
of simulated workers, on a virtual clock.

    .venv/bin/python -m bench.simulate [--quick] [--sizes 10:100000,10000:10000000]
                                       [--scan-budget 20000000] [--io-us 0] [--slow 0]

The Main's ``Scheduler`` (the real one, pure) is driven as the Main's I/O loop drives it: at
each turn it takes the results that arrived (``finish``), ticks every 0.2 s (``observe``) and
places what fits (``assign``). Workers (1 slot each) are simulated: a one-way delay of
0.25-2.5 ms to the Main each, tasks of 0.5-1.5 s (spread evenly), run in the order received.
The CPU time the scheduler takes (measured, ``time.process_time``) is the Main's busy time
on the virtual clock: results that arrive meanwhile wait for the next turn, as they would.
``--io-us`` adds a fixed cost per message the Main reads or sends (its sockets and codec,
which the simulation does not run). ``--slow`` makes that fraction of workers 3x slower.

Each size runs in a subprocess of its own (memory is measured per size): with the heaps
(``Scheduler``) and with the scan over every worker they replaced (``ScanScheduler``), whose
run is capped at ``--scan-budget`` / workers tasks (a scan at 10,000 workers costs ms per task).
A table in Markdown is printed; the worker core's CPU per task as its Mains grow comes after
it (``core_cost``). Figures: docs/design.md, "Placement at scale, and a simulated ten thousand".
"""

from __future__ import annotations

import argparse
import gc
import heapq
import itertools
import json
import random
import resource
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from distrib.main._scheduler import Scheduler
from distrib.main._tracked import Task, WorkerView
from distrib.wire._messages import Outcome
from distrib.worker._core import Core
from distrib.worker._events import (
    DistReady, ExecutorReady, Report, Send, Spawn, TaskDone, TaskQueued, Turn)
from distrib.worker._state import QueuedTask

REPO = Path(__file__).resolve().parent.parent
SIZES = [(10, 100_000), (100, 1_000_000), (1_000, 1_000_000), (10_000, 10_000_000)]
QUICK = [(10, 10_000), (100, 20_000), (1_000, 50_000), (10_000, 100_000)]
LATENCY = (0.00025, 0.0025)  # one way, seconds: a LAN to a data centre's
TICK = 0.2  # the Main's tick (its loop: min(heartbeat interval, 0.2 s))
PLATFORMS = ("*",)
DONE, ARRIVE, DELIVER, TURN, TICKED = range(5)


class ScanScheduler(Scheduler):
    """The placement rule before the heaps: ``max`` over every able worker for each task."""

    def assign(self) -> dict[str, list[Task]]:
        out: dict[str, list[Task]] = {}
        for req, queue in self.pending.items():
            if not queue:
                continue
            capable = [w for w in self.workers.values()
                       if w.can_run(req, self.python) and not w.full]
            threads = req[1]
            while queue and capable:
                best = max(capable, key=lambda w: (w.slots - w.inflight_slots + w.lent,
                                                   self.depth(w) - w.inflight_slots + w.lent))
                if (self.depth(best) - best.inflight_slots + best.lent < threads
                        and not queue[0].depth):
                    break
                task = queue.popleft()
                task.link = best.link
                best.inflight[task.task_id] = task
                best.inflight_slots += threads
                out.setdefault(best.link, []).append(task)
        return out


def duration(task_id: int) -> float:
    """A task's run time: 0.5-1.5 s, spread evenly (a hash of its id: nothing is stored)."""
    return 0.5 + (task_id * 2654435761 % 1000) / 1000


@dataclass(eq=False, slots=True)
class SimWorker:
    """A simulated worker: its slots run what it received, in order."""

    link: str
    slots: int
    latency: float  # one way to the Main, seconds
    speed: float = 1.0  # a task takes duration x this
    queue: deque[int] = field(default_factory=deque)
    free: int = 0


@dataclass
class Result:
    workers: int
    tasks: int
    rule: str  # "heaps" or "scan"
    assign_us: float = 0.0  # CPU in assign, per task
    scheduler_us: float = 0.0  # CPU in every scheduler call (add, finish, observe, assign)
    observe_ms: float = 0.0  # CPU of one tick's observe, mean
    bytes_per_pending: float = 0.0  # RSS growth per task added, before any is placed
    peak_rss_mb: float = 0.0
    makespan: float = 0.0  # virtual seconds until the last result reached the Main
    efficiency: float = 0.0  # ideal (work / slots) over makespan
    # the Main's scheduler CPU (and ``io_us``) over the makespan (over 1: it falls behind)
    main_busy: float = 0.0
    wall: float = 0.0  # seconds the simulation took


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def simulate(n_workers: int, n_tasks: int, scan: bool = False, io_us: float = 0.0,
             slow: float = 0.0, seed: int = 1) -> Result:
    """Run ``n_tasks`` on ``n_workers`` simulated workers, all there and all tasks submitted
    at time 0; see the module's docstring."""
    started = time.perf_counter()
    sim = Simulation(n_workers, scan, io_us, slow, seed)
    result = Result(n_workers, n_tasks, "scan" if scan else "heaps")
    before = _rss()
    cpu = time.process_time()
    work = sim.submit(n_tasks)
    add_cpu = time.process_time() - cpu
    result.bytes_per_pending = (_rss() - before) / max(1, n_tasks)
    sim.run()
    assert sim.finished == n_tasks and len(sim.sched) == 0, (sim.finished, len(sim.sched))
    result.makespan = now = sim.last_result
    slots = sum(w.slots / w.speed for w in sim.sims.values())
    result.efficiency = work / slots / now if now else 0.0
    busy = sim.finish_cpu + sim.observe_cpu + sim.assign_cpu
    result.assign_us = sim.assign_cpu / n_tasks * 1e6
    result.scheduler_us = (add_cpu + busy) / n_tasks * 1e6
    result.observe_ms = sim.observe_cpu / max(1, sim.ticks) * 1e3
    result.main_busy = (busy + sim.io_time) / now if now else 0.0
    result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result.wall = time.perf_counter() - started
    return result


Event = tuple[float, int, int, Any, Any]  # (time, order, kind, worker, payload)


class Simulation:
    """The Main's scheduler and simulated workers on a virtual clock (``run``)."""

    def __init__(self, n_workers: int, scan: bool = False, io_us: float = 0.0,
                 slow: float = 0.0, seed: int = 1, charge_cpu: bool = True) -> None:
        rng = random.Random(seed)
        self.charge_cpu = charge_cpu  # the scheduler's CPU time passes on the virtual clock
        self.sched = (ScanScheduler if scan else Scheduler)("3.11")
        self.io = io_us * 1e-6
        self.sims: dict[str, SimWorker] = {}
        for i in range(n_workers):
            worker = SimWorker(f"w{i}", 1, rng.uniform(*LATENCY),
                               3.0 if rng.random() < slow else 1.0)
            worker.free = worker.slots
            self.sims[worker.link] = worker
            view = WorkerView(worker.link, worker.link, "linux-x86_64", "3.11", worker.slots)
            view.round_trip = 2 * worker.latency  # (as its link measures it)
            self.sched.join(view)
        self.events: list[Event] = []
        self.seq = itertools.count()
        self.inbox: list[tuple[str, int]] = []  # results read at the Main's next turn
        self.busy_until = self.last_tick = self.last_result = 0.0
        self.turn_due = False
        self.assign_cpu = self.finish_cpu = self.observe_cpu = 0.0
        self.io_time = 0.0  # charged for messages (``io_us``)
        self.ticks = self.finished = self.submitted = 0

    def submit(self, n_tasks: int) -> float:
        """Add ``n_tasks`` tasks to the scheduler; return their work, in seconds."""
        frames: list[Any] = []  # (the call's payload is not the scheduler's: shared, empty)
        work = 0.0
        for i in range(self.submitted, self.submitted + n_tasks):
            self.sched.add(Task(i, "f", frames, PLATFORMS, 1, 0, None))
            work += duration(i)
        self.submitted += n_tasks
        return work

    def run(self) -> None:
        """Until every submitted task's result reached the Main."""
        events, seq, push, pop = self.events, self.seq, heapq.heappush, heapq.heappop
        push(events, (TICK, next(seq), TICKED, None, None))
        self.turn(0.0)
        while events:
            now, _, kind, worker, payload = pop(events)
            if kind == DONE:  # a slot finished: its result goes to the Main, the next starts
                worker.free += 1
                push(events, (now + worker.latency, next(seq), ARRIVE, worker, payload))
                self.start(worker, now)
            elif kind == DELIVER:
                worker.queue.extend(payload)
                self.start(worker, now)
            elif kind == TURN:
                self.turn(now)
            else:
                if kind == ARRIVE:
                    self.inbox.append((worker.link, payload))
                    self.last_result = now
                elif self.finished + len(self.inbox) < self.submitted:
                    push(events, (now + TICK, next(seq), TICKED, None, None))
                if self.turn_due:
                    pass  # (it is read at the turn already due)
                elif self.busy_until <= now:
                    self.turn(now)
                else:  # the Main reads it once it is free
                    self.turn_due = True
                    push(events, (self.busy_until, next(seq), TURN, None, None))

    def start(self, worker: SimWorker, now: float) -> None:
        """Start what the worker holds on its free slots."""
        while worker.free and worker.queue:
            task_id = worker.queue.popleft()
            worker.free -= 1
            heapq.heappush(self.events, (now + duration(task_id) * worker.speed,
                                         next(self.seq), DONE, worker, task_id))

    def turn(self, now: float) -> None:
        """A turn of the Main's loop (main/_loop.py): the results read, a tick if one is due,
        and what fits placed. Its CPU time is the Main's busy time on the virtual clock."""
        self.turn_due = False
        sched, inbox = self.sched, self.inbox
        cpu = time.process_time()
        for link, task_id in inbox:
            sched.finish(link, task_id)
        cpu2 = time.process_time()
        self.finish_cpu += cpu2 - cpu
        if now - self.last_tick >= TICK:
            sched.observe(now - self.last_tick)
            self.last_tick = now
            self.ticks += 1
            cpu3 = time.process_time()
            self.observe_cpu += cpu3 - cpu2
            cpu2 = cpu3
        out = sched.assign()
        cpu3 = time.process_time()
        self.assign_cpu += cpu3 - cpu2
        self.finished += len(inbox)
        cost = cpu3 - cpu if self.charge_cpu else 0.0
        self.io_time += self.io * (len(inbox) + len(out))
        self.busy_until = now + cost + self.io * (len(inbox) + len(out))
        inbox.clear()
        for link, tasks in out.items():
            worker = self.sims[link]
            heapq.heappush(self.events, (self.busy_until + worker.latency, next(self.seq),
                                         DELIVER, worker, [t.task_id for t in tasks]))


def core_cost(mains: int, slots: int = 64, tasks: int = 20_000) -> float:
    """CPU microseconds a worker's core (``worker/_core.Core``, pure) spends per task
    (queued, started at a turn, done, reported) with ``mains`` Mains keeping it busy: each
    Main's finished task is replaced by another of that Main's, as its scheduler would."""
    core = Core(slots)
    core.handle(DistReady("d"), 0.0)
    ids = itertools.count()
    runs: dict[int, deque[int]] = {}  # executor -> its runs, the first running
    running: deque[tuple[int, int]] = deque()  # (executor, run) in the order they started
    now = 0.0

    def queue(peer: bytes) -> None:
        core.handle(TaskQueued(QueuedTask(peer, next(ids), "d", 1, None, [b"x"])), now)

    def turn() -> None:
        for action in core.handle(Turn(), now):
            if isinstance(action, Spawn):
                runs[action.ex_id] = deque()
                core.handle(ExecutorReady(action.ex_id), now)
            elif isinstance(action, Send):
                for run in action.runs:
                    runs[action.ex_id].append(run.run_id)
                    running.append((action.ex_id, run.run_id))

    peers = [f"main-{i}".encode() for i in range(mains)]
    for i in range(2 * slots + mains):  # every Main has a task or more queued
        queue(peers[i % mains])
    turn()
    turn()
    done = 0
    cpu = time.process_time()
    while done < tasks:
        ex_id, run_id = running.popleft()
        if runs[ex_id][0] != run_id:  # (prefetched behind another: done after it)
            running.append((ex_id, run_id))
            continue
        runs[ex_id].popleft()
        now += 0.001
        for action in core.handle(TaskDone(ex_id, run_id, Outcome.OK, {}, []), now):
            if isinstance(action, Report):
                queue(action.task.peer)
                done += 1
        turn()
    return (time.process_time() - cpu) / tasks * 1e6


def _row(result: Result) -> str:
    return (f"| {result.workers:,} | {result.tasks:,} | {result.rule} | {result.assign_us:.1f} "
            f"| {result.scheduler_us:.1f} | {result.observe_ms:.2f} | {result.main_busy:.3f} "
            f"| {result.bytes_per_pending:.0f} | {result.peak_rss_mb:,.0f} "
            f"| {result.efficiency:.3f} | {result.wall:.0f} |")


HEADER = ("| workers | tasks | placement | assign µs/task | scheduler µs/task | observe ms/tick "
          "| Main busy | bytes/pending task | peak RSS MB | efficiency | simulation s |\n"
          "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def _sizes(text: str) -> list[tuple[int, int]]:
    return [(int(w), int(t)) for w, t in (item.split(":") for item in text.split(","))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: about a minute")
    parser.add_argument("--sizes", type=_sizes, help="workers:tasks,... (default: 10:100000,"
                        "100:1000000,1000:1000000,10000:10000000)")
    parser.add_argument("--scan-budget", type=int,
                        help="the scan's run: at most this over workers tasks (0: no scan; "
                        "default 20,000,000, 2,000,000 with --quick)")
    parser.add_argument("--io-us", type=float, default=0.0,
                        help="the Main's CPU per message read or sent, µs (default 0)")
    parser.add_argument("--slow", type=float, default=0.0,
                        help="fraction of workers 3x slower (default 0)")
    parser.add_argument("--mains", default="1,10,100,1000",
                        help="Mains of one worker core, for its cost per task")
    parser.add_argument("--core-tasks", type=int, default=20_000,
                        help="tasks timed on the core with 10 Mains or fewer (fewer beyond)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # workers:tasks:scan, in a subprocess
    args = parser.parse_args(argv)
    if args.one:
        w, t, scan = args.one.split(":")
        print(json.dumps(asdict(simulate(int(w), int(t), scan == "1", args.io_us, args.slow))))
        return
    sizes = args.sizes or (QUICK if args.quick else SIZES)
    budget = args.scan_budget if args.scan_budget is not None else (
        2_000_000 if args.quick else 20_000_000)
    print(f"Simulated: 1-slot workers, tasks of 0.5-1.5 s, one-way delays of 0.25-2.5 ms, "
          f"--io-us {args.io_us:g}, --slow {args.slow:g}.\n")
    print(HEADER)
    for workers, tasks in sizes:
        runs = [(tasks, False)]
        if budget:
            runs.append((min(tasks, budget // workers), True))
        for n, scan in runs:
            one = f"{workers}:{n}:{int(scan)}"
            done = subprocess.run(
                [sys.executable, "-m", "bench.simulate", "--one", one, "--io-us",
                 str(args.io_us), "--slow", str(args.slow)],
                capture_output=True, text=True, check=True, cwd=REPO)
            print(_row(Result(**json.loads(done.stdout))), flush=True)
    print("\n| Mains of one 64-slot worker | core µs/task |\n|---:|---:|")
    for mains in (int(m) for m in args.mains.split(",")):
        tasks = max(args.core_tasks // 20, args.core_tasks // max(1, mains // 10))
        print(f"| {mains:,} | {core_cost(mains, tasks=tasks):.1f} |", flush=True)


if __name__ == "__main__":
    main()

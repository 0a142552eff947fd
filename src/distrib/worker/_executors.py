"""Executor processes: started (by ``_forks``: forked from their environment's template, or
spawned), what the executors say on their pipes, their deaths, the owner's niceness, memory
and disk limits, and the strays tasks leave behind (this daemon is their subreaper).

What to start and stop is decided by the core (``Core``); this module does it and turns what
executors say into its events.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from distrib import _process
from distrib._logs import RateLimited
from distrib.wire._messages import Outcome
from distrib.wire._pipe import READ_BUDGET, PipeError
from distrib.wire._pipe_messages import (
    Call, CancelChild, Done, EnvError, Leaving, Out, Park, PipeMessage, Ready, Skipped, Unpark)
from distrib.wire._record import ErrorRecord
from distrib.worker import _pool, _strays
from distrib.worker._core import Core
from distrib.worker._diskwatch import DiskWatcher, Watched
from distrib.worker._events import (
    Action,
    EnvKey,
    ExecutorDied,
    ExecutorEnvError,
    ExecutorLeaving,
    ExecutorReady,
    TaskDone,
    TaskParked,
    TaskResumed,
    TaskSkipped,
)
from distrib.worker._memory import MemoryWatch
from distrib.worker._forks import Forks
from distrib.worker._pool import ExecutorProcess, Recipe

log = logging.getLogger("distrib.worker")
peer_log = RateLimited(log)  # for what a remote peer (or task code) can trigger

STRAYS_EVERY = 1.0  # seconds between looks for processes tasks left to this daemon
PIPE_LAST_MESSAGES = 1_000  # read from an executor that exited, at most per tick
LAST_WORDS_SECONDS = 5.0  # then an executor that exited is dead, whatever still comes
STRAYS_AFTER_DEATH = 3.0  # seconds of looks at every tick after an executor ended

Apply = Callable[[list[Action]], None]


def _ignore(*args: Any) -> None:
    pass


class Executors:
    """The executor processes of one daemon, and the templates they are forked from."""

    def __init__(self, name: str, runs: Path, nice: int, core: Core, memory: MemoryWatch,
                 apply: Apply, disk: DiskWatcher | None = None) -> None:
        self.name = name
        self.runs = runs  # where executors work
        self.nice = nice  # the owner's niceness, for executors started from now on
        self.core = core
        self.memory = memory
        self.disk = disk  # what tasks write, measured in a thread of its own
        self.apply = apply
        # What executors ask of the rest of the daemon (set once it is all built):
        self.builds: Callable[[], set[int]] = set  # environment builds (children, not strays)
        self.on_call: Callable[[int, Call], None] = _ignore  # a call they made
        self.on_output: Callable[[int, int, str], None] = _ignore  # a task's output
        self.on_cancel_child: Callable[[int, int, int], None] = _ignore  # a call they cancel
        self.procs: dict[int, ExecutorProcess] = {}
        self.forks = Forks(self.procs, _process.become_subreaper(),
                           lambda ex_id: self.apply(self.died(ex_id)))
        self._memory_kills: dict[int, tuple[str, int]] = {}  # executor -> why, limit
        self._disk_kills: dict[int, tuple[int, str]] = {}  # executor -> its task, why (it
        # wrote too much)
        self._copies: dict[int, Path] = {}  # executors working in a private copy of a tree
        self._envs: dict[int, Path] = {}  # each executor's environment tree
        self._isolation = ""  # how executors keep task writes private, once one said
        self._strays_next = 0.0  # when to look for strays next
        self._strays_until = 0.0  # look at every tick until then (an executor ended)
        self._strays = _strays.Strays()

    def fds(self) -> list[int]:
        """What the loop polls: executors (started, or to say their pid), busy templates."""
        return [proc.fileno() for proc in self.procs.values()
                if proc.proc or proc.pid_due] + self.forks.fds()

    def writing(self) -> list[int]:
        """Executors the loop polls for writing too: the kernel has not taken all sent yet."""
        return [proc.fileno() for proc in self.procs.values() if proc.pipe.pending]

    def on_readable(self, events: dict[Any, int]) -> None:
        for ex_id, proc in list(self.procs.items()):
            mask = events.get(proc.fileno(), 0)
            if mask and proc.pid_due:  # (a sandboxed executor's first byte: its pid)
                if proc.said_pid() is False:
                    self.apply(self.died(ex_id))
                continue
            if mask & zmq.POLLOUT:
                try:
                    proc.pipe.flush()
                except OSError:
                    self.apply(self.died(ex_id))
                    continue
            # One read of what has come, then every message it holds whole (they won't wake
            # the poller), and no more this turn, however fast a task keeps sending.
            if mask & ~zmq.POLLOUT and self._on_executor(ex_id, proc):
                while self.procs.get(ex_id) is proc and self._on_executor(ex_id, proc, 0):
                    pass
        self.forks.on_readable(events)

    def read_ready(self) -> None:
        """Read what executors sent since the loop last did, before a tick judges their
        tasks: a result that came in time is not lost to a timeout, nor the output before
        it."""
        poller = select.poll()
        for proc in self.procs.values():
            if proc.proc is not None:
                poller.register(proc.fileno(), select.POLLIN)
        ready = poller.poll(0)
        if ready:
            self.on_readable({fd: zmq.POLLIN for fd, _ in ready})

    def spawn(self, key: EnvKey, recipe: Recipe, ex_id: int) -> list[Action]:
        """Start executor ``ex_id``; what follows if it cannot start."""
        try:
            self.procs[ex_id] = _pool.executor(recipe)
            self._envs[ex_id] = recipe.env
            self.forks.start(key, recipe, ex_id)
        except OSError as exc:
            log.error("cannot start an executor: %s", exc)
            record = ErrorRecord("distrib.WorkerCrashed", f"worker {self.name} could "
                                 f"not start an executor: {exc}")
            return self.core.handle(ExecutorDied(ex_id, record.to_wire()), time.monotonic())
        return []

    def kill(self, ex_id: int) -> None:
        self._disk_kills.pop(ex_id, None)
        self._envs.pop(ex_id, None)
        self._copies.pop(ex_id, None)
        proc = self.procs.pop(ex_id, None)
        if proc is not None:
            proc.kill()
            self._strays_until = time.monotonic() + STRAYS_AFTER_DEATH

    def _sweep_strays(self, procs: dict[int, _process.Entry], at_once: bool = False) -> None:
        """Kill what tasks left to this daemon (``_strays``), and reap what exited."""
        ours, boxed = _pool.started(list(self.procs.values()),
                                    list(self.forks.templates.values()), procs)
        ours |= self.builds() | self.forks.ahead.pids()
        killed = self._strays.sweep(procs, ours, boxed, at_once)
        if killed:
            peer_log.warning("killed %d process(es) left running by tasks of ended executors",
                             killed)

    def _on_executor(self, ex_id: int, proc: ExecutorProcess,
                     budget: int | None = READ_BUDGET) -> bool:
        """Read (``budget``: as ``ExecutorProcess.read``) and act on the executor's next
        message; False if none has all come."""
        try:
            message = proc.read(budget)
        except PipeError as exc:
            log.warning("executor %d sent a malformed message (%s); stopping it", proc.pid, exc)
            self.apply(self.died(ex_id))
            return False
        except (EOFError, OSError, ValueError) as exc:
            log.debug("executor %d: %s", proc.pid, exc, exc_info=True)
            self.apply(self.died(ex_id))
            return False
        if message is None:
            return False
        self._dispatch(ex_id, proc, message)
        return True

    def _dispatch(self, ex_id: int, proc: ExecutorProcess, message: PipeMessage) -> None:
        now = time.monotonic()
        if isinstance(message, Done):
            self.apply(self.core.handle(TaskDone(ex_id, message.run_id, message.outcome,
                                                 message.info, list(message.frames),
                                                 message.shm), now))
        elif isinstance(message, Out):
            self.on_output(ex_id, message.stream, message.text)
        elif isinstance(message, Ready):
            self._note_isolation(message.isolation)
            env = self._envs.get(ex_id)
            if message.isolation == "copy" and env is not None:
                self._copies[ex_id] = env
            self.apply(self.core.handle(ExecutorReady(ex_id), now))
        elif isinstance(message, Skipped):
            self.apply(self.core.handle(TaskSkipped(ex_id, message.run_id), now))
        elif isinstance(message, EnvError):
            self.apply(self.core.handle(ExecutorEnvError(ex_id, message.info,
                                                         list(message.frames)), now))
        elif isinstance(message, Call):
            self.on_call(ex_id, message)
        elif isinstance(message, (Park, Unpark)):
            self.apply(self.core.handle(TaskParked(ex_id, message.run_id)
                                        if isinstance(message, Park)
                                        else TaskResumed(ex_id, message.run_id), now))
        elif isinstance(message, CancelChild):
            self.on_cancel_child(ex_id, message.run_id, message.child)
        elif isinstance(message, Leaving):  # (its task's outcome came first)
            peer_log.warning("executor %d ended: %s", proc.pid, message.why)
            self.apply(self.core.handle(ExecutorLeaving(ex_id), now))
        else:  # (a message only the daemon sends)
            log.warning("executor %d sent an unexpected %r; stopping it", proc.pid,
                        message.VERB.value)
            self.apply(self.died(ex_id))

    def _note_isolation(self, kind: str) -> None:
        if kind == self._isolation:
            return
        self._isolation = kind
        if kind == "overlay":
            log.info("task writes are private: each executor sees its environment through an "
                     "overlay in a mount namespace of its own")
        else:
            log.warning("no mount namespaces here: each task works in a private copy of its "
                        "environment, but a write through a module's __file__ reaches the "
                        "shared tree")

    def died(self, ex_id: int) -> list[Action]:
        """Executor ``ex_id`` died (or must be taken as dead): what the core does about it."""
        proc = self.procs.get(ex_id)
        if proc is None:
            return []
        code = proc.poll()
        head = self.core.running(ex_id)
        if head is not None:
            peer_log.warning("executor %d died (exit %s) running task %d; replacing it",
                             proc.pid, code, head.task.task_id)
        over = self._disk_kills.pop(ex_id, None)
        if over is not None and head is not None and head.run_id == over[0]:
            # (else the task ended before the kill, and the next one dies as in a crash)
            info = ErrorRecord("distrib.TaskDiskExceeded",
                               f"{over[1]}; it was stopped and what it wrote dropped").to_wire()
            return self.core.handle(ExecutorDied(ex_id, info, Outcome.ERROR), time.monotonic())
        killed = self._memory_kills.pop(ex_id, None)
        if killed is not None:
            info = ErrorRecord("distrib.WorkerCrashed", f"stopped: {killed[0]}").to_wire()
            if killed[1]:
                info["memory_limit"] = str(killed[1])  # (the Main retries only above it)
            return self.core.handle(ExecutorDied(ex_id, info), time.monotonic())
        # (its pipe closes as it exits: the exit code may not be there yet, and is not
        # waited for here, where every Main's work waits too)
        said = f" (exit code {code})" if code is not None else ""
        ex = self.core.executors.get(ex_id)
        if ex is not None and not ex.ready:  # (its interpreter or distrib failed: no task's doing)
            said += (" before it was ready: it could not start here, and its output is in the "
                     "worker's log")
        record = ErrorRecord("distrib.WorkerCrashed", f"executor process {proc.pid} on worker "
                             f"{self.name} died{said}")
        return self.core.handle(ExecutorDied(ex_id, record.to_wire()), time.monotonic())

    def to_parent(self, ex_id: int, run_id: int, number: int, status: str,
                  info: dict[str, str], frames: list[Any]) -> None:
        """How call ``number`` of task ``run_id`` ended: to its executor, if it still runs the
        task (a failed write is the executor's death)."""
        proc = self.procs.get(ex_id)
        if proc is None or not self.parent_runs(ex_id, run_id):
            return
        try:
            proc.child(run_id, number, status, info, frames)
        except OSError:
            self.apply(self.died(ex_id))

    def parent_runs(self, ex_id: int, run_id: int) -> bool:
        run = self.core.running(ex_id)
        return run is not None and run.run_id == run_id

    def renice(self, nice: int) -> None:
        """Every thread of the executors, what they started, and the templates (executors
        forked later inherit theirs) runs at ``nice`` now."""
        self.nice = nice
        if _process.renice_trees([proc.pid for proc in self.procs.values() if proc.pid] +
                                 self.forks.pids(), nice):
            log.warning("running executors keep their niceness: this user may not lower it to "
                        "%d (new executors start at %d)", nice, nice)
        self.forks.ahead.drop()  # (a lower niceness it may not take: a new one)

    def _watch_memory(self, procs: dict[int, _process.Entry]) -> None:
        """Stop executors over the owner's memory limits (their tasks crash, saying so)."""
        running: dict[int, int] = {}
        idle: dict[int, int] = {}
        for ex_id, proc in self.procs.items():
            ex = self.core.executors.get(ex_id)
            if proc.pid and ex_id not in self._memory_kills:
                (running if ex is not None and ex.runs else idle)[ex_id] = proc.pid
        templates = tuple(self.forks.pids())
        kids = _process.children(procs)
        trees = {ex_id: [p for p in _process.descendants(pid, kids) if not procs[p].zombie]
                 for ex_id, pid in {**running, **idle}.items()}
        for ex_id, why, limit in self.memory.over(running, idle, self.name, templates, trees):
            task = self.core.running(ex_id)
            peer_log.warning("stopping executor %d%s: %s", self.procs[ex_id].pid,
                             f" (task {task.task.task_id})" if task is not None else "", why)
            self._memory_kills[ex_id] = (why, limit)
            self.procs[ex_id].signal_kill()  # (its death is then seen as any other)

    def _watch_disk(self, disk: DiskWatcher) -> None:
        """Tell the disk watcher which executors run which task now."""
        watched: dict[int, Watched] = {}
        for ex_id, proc in self.procs.items():
            if proc.pid and ex_id not in self._disk_kills:
                run = self.core.running(ex_id)
                watched[ex_id] = Watched(proc.pid, run.run_id if run is not None else 0,
                                         self._copies.get(ex_id), proc.private)
        disk.watch(watched)

    def stop_over_disk(self) -> None:
        """Stop the executors the disk watcher found over a limit (their tasks fail, saying
        so, and what they wrote goes with their folders), unless the task measured ended
        meanwhile (the next measure tells)."""
        if self.disk is None:
            return
        for ex_id, run_id, why in self.disk.take():
            proc = self.procs.get(ex_id)
            run = self.core.running(ex_id)
            if proc is None or ex_id in self._disk_kills or (
                    run.run_id if run is not None else 0) != run_id:
                continue
            peer_log.warning("stopping executor %d: %s", proc.pid, why)
            self._disk_kills[ex_id] = (run_id, why)
            proc.signal_kill()  # (its death is then seen as any other)

    def tick(self, now: float) -> None:
        self.read_ready()
        # (not while forks are answered: an executor forked and not attached yet looks a stray)
        strays = self.forks.enabled and not self.forks.under_way() and (
            now >= self._strays_next or now < self._strays_until)
        procs = _process.table_of_tree(os.getpid()) if self.memory.limit else (
            _process.table_of_children([os.getpid(), *self.forks.boxed()]) if strays else {})
        if self.memory.limit:
            self._watch_memory(procs)
        if self.disk is not None:
            self.stop_over_disk()
            self._watch_disk(self.disk)
        for ex_id, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self._last_words(ex_id, proc, now)
            elif proc.pid_due and now > proc.pid_due:  # (sandboxed: it did not say its pid)
                self.apply(self.died(ex_id))
        self.forks.tick(now, self.nice)
        if strays:
            self._strays_next = now + STRAYS_EVERY
            self._sweep_strays(procs)

    def _last_words(self, ex_id: int, proc: ExecutorProcess, now: float) -> None:
        """An executor that exited: what it sent before (a result, its output) is read
        first, as the loop would have (its end is then its pipe's), and it is dead. As in the
        loop, a tick reads at most ``READ_BUDGET`` bytes of it: a process its task left may
        hold its pipe and write on. While its task's outcome may be in what is left, the rest
        is read at the next ticks, for at most ``LAST_WORDS_SECONDS``."""
        proc.ended = proc.ended or now
        left, drained = READ_BUDGET, True
        for _ in range(PIPE_LAST_MESSAGES):
            try:
                message = proc.read(max(left, 0))
            except (PipeError, EOFError, OSError, ValueError):
                break  # (its end)
            left = proc.pipe.budget_left or 0
            if message is None:
                drained = left > 0  # (else it stopped at the budget: more may have come)
                break
            self._dispatch(ex_id, proc, message)
            if self.procs.get(ex_id) is not proc:
                return
        else:
            drained = False
        # (an idle one is dead at once: a task handed to it meanwhile would crash with it)
        if not drained and now < proc.ended + LAST_WORDS_SECONDS and \
                self.core.running(ex_id) is not None:
            return
        if self.procs.get(ex_id) is proc:
            self.apply(self.died(ex_id))

    def close(self) -> None:
        """Kill every executor and template, with every process below them, and what they
        left to this daemon (nothing a task started outlives the worker)."""
        if self.disk is not None:
            self.disk.close()
        # All signalled first, then reaped: many don't wait in turn.
        _process.kill_trees([proc.pid for proc in self.procs.values()
                            if proc.pid and proc.poll() is None])
        for proc in self.procs.values():
            proc.kill()
        self.procs.clear()
        self.forks.close()
        if self.forks.enabled:
            self._sweep_strays(_process.table(), at_once=True)

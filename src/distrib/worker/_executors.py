"""Executor processes: started from a template that imported their environment once (forked
from it) or spawned, the template's interpreter started ahead (a zygote), what the executors
say on their pipes, their deaths, the owner's niceness, memory and disk limits, and the strays
tasks leave behind (this daemon is their subreaper).

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
    Call, CancelChild, Done, EnvError, Leaving, NoFork, Out, Park, PipeMessage, Ready, Skipped,
    Unpark)
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
from distrib.worker._ahead import Ahead
from distrib.worker._pool import ExecutorProcess, Recipe, Template, idle_templates
from distrib.worker._sandbox import Boxed

log = logging.getLogger("distrib.worker")
peer_log = RateLimited(log)  # for what a remote peer (or task code) can trigger

STRAYS_EVERY = 1.0  # seconds between looks for processes tasks left to this daemon
PIPE_LAST_MESSAGES = 1_000  # read from an executor that exited, at most (then: dead)
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
        self.forking = _process.become_subreaper()  # executors forked from templates
        self.templates: dict[EnvKey, Template] = {}
        self.ahead = Ahead()  # the next template's interpreter, started ahead
        self._no_fork: set[EnvKey] = set()  # environments whose templates cannot fork
        self._to_fork: set[EnvKey] = set()  # ready templates asked for executors this turn
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
        return [proc.fileno() for proc in self.procs.values() if proc.proc or proc.pid_due] + [
            t.fileno() for t in self.templates.values() if not t.ready or t.asked]

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
        for key, template in list(self.templates.items()):
            if template.fileno() not in events:
                continue
            if not template.ready:
                self._on_template(key, template)
            elif template.asked:
                self._forks_failed(key, template, template.answered(time.monotonic()))

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
            self._start(key, recipe, ex_id)
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

    def _start(self, key: EnvKey, recipe: Recipe, ex_id: int) -> None:
        """Attach executor ``ex_id`` to a process: forked from its environment's template
        (started now if there is none; the executor waits for its import), else spawned."""
        ex = self.procs[ex_id]
        if not self.forking or key in self._no_fork:
            _pool.spawn(recipe, ex)
            return
        now = time.monotonic()
        template = self.templates.get(key)
        if template is None or template.proc.poll() is not None:
            if template is not None:
                self.drop_template(key)
            template = self.templates[key] = Template.start(recipe, now, self.ahead.take(now))
        template.last_used = now
        template.waiting.append(ex_id)  # (forked with the others of this turn, at once)
        if template.ready:
            self._to_fork.add(key)

    def fork_waiting(self) -> None:
        """Fork the executors ready templates were asked for in this turn, each template's at
        once (it forks them one after the other while this loop goes on)."""
        if not self._to_fork:
            return
        keys, self._to_fork = self._to_fork, set()
        for key in keys:
            template = self.templates.get(key)
            if template is not None and template.ready:
                self._fork(key, template)

    def _fork(self, key: EnvKey, template: Template) -> None:
        waiting = [ex for ex_id in template.waiting
                   if (ex := self.procs.get(ex_id)) is not None and ex.theirs is not None]
        template.waiting.clear()
        self._forks_failed(key, template, template.ask(waiting, time.monotonic()))

    def _forks_failed(self, key: EnvKey, template: Template,
                      failed: list[ExecutorProcess]) -> None:
        """``template`` did not fork ``failed``: it stops, and all it was asked are spawned."""
        if failed:
            failed += template.give_up()
            self.drop_template(key)
            template.waiting = [i for i, ex in self.procs.items() if ex in failed]
            self._spawn_waiting(template)
            for ex in set(failed) - set(self.procs.values()):
                ex.kill()  # (stopped while it was asked for: its new sockets close)

    def _on_template(self, key: EnvKey, template: Template) -> None:
        """A template finished importing its environment: fork the executors waiting for it
        (or, if it cannot, spawn them)."""
        try:
            message = template.control.receive()
            if message is None:
                return None  # (not all of it yet)
        except (EOFError, OSError, ValueError, PipeError):
            message = None  # (it died, or broke the protocol: as good as dead)
        if isinstance(message, Ready):
            template.ready = True
            self._fork(key, template)
            return None
        if isinstance(message, NoFork) and key not in self._no_fork:
            self._no_fork.add(key)
            peer_log.warning("executors of environment %s are spawned one by one (each "
                             "imports it): %s", key.dist[:12], message.why)
        # (an import that raised: each executor imports again and says so itself)
        self.drop_template(key)
        return self._spawn_waiting(template)

    def _spawn_waiting(self, template: Template) -> None:
        for ex_id in template.waiting:
            ex = self.procs.get(ex_id)
            if ex is not None and ex.theirs is not None:
                try:
                    _pool.spawn(template.recipe, ex)
                except OSError as exc:
                    log.error("cannot start an executor: %s", exc)
                    self.apply(self.died(ex_id))
        template.waiting.clear()

    def _boxed(self) -> list[int]:
        """The sandboxed templates: what an ended executor left goes to them."""
        return [t.proc.pid for t in self.templates.values() if isinstance(t.proc, Boxed)]

    def _sweep_strays(self, procs: dict[int, _process.Entry], at_once: bool = False) -> None:
        """Kill what tasks left to this daemon (``_strays``), and reap what exited."""
        ours, boxed = _pool.started(list(self.procs.values()), list(self.templates.values()),
                                    procs)
        killed = self._strays.sweep(procs, ours | self.builds() | self.ahead.pids(), boxed,
                                    at_once)
        if killed:
            peer_log.warning("killed %d process(es) left running by tasks of ended executors",
                             killed)

    def dist_replaced(self, dist: str) -> None:
        """A distribution's tree is removed: its templates stop."""
        for key in [k for k in self.templates if k.dist == dist]:
            self.drop_template(key)

    def drop_template(self, key: EnvKey) -> None:
        template = self.templates.pop(key, None)
        if template is not None:
            template.kill()
            asked = template.give_up()  # (not forked yet: they are dead)
            for ex_id in [i for i, ex in self.procs.items() if ex in asked]:
                self.apply(self.died(ex_id))

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
        if kind != self._isolation:
            self._isolation = kind
            _pool.say_isolation(kind)

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
        if _process.renice_trees([proc.pid for proc in self.procs.values() if proc.pid] + [
                t.proc.pid for t in self.templates.values()], nice):
            log.warning("running executors keep their niceness: this user may not lower it to "
                        "%d (new executors start at %d)", nice, nice)
        self.ahead.drop()  # (a lower niceness it may not take: a new one)

    def _watch_memory(self, procs: dict[int, _process.Entry]) -> None:
        """Stop executors over the owner's memory limits (their tasks crash, saying so)."""
        running: dict[int, int] = {}
        idle: dict[int, int] = {}
        for ex_id, proc in self.procs.items():
            ex = self.core.executors.get(ex_id)
            if proc.pid and ex_id not in self._memory_kills:
                (running if ex is not None and ex.runs else idle)[ex_id] = proc.pid
        templates = tuple(t.proc.pid for t in self.templates.values())
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
        strays = self.forking and (now >= self._strays_next or now < self._strays_until) and \
            not _pool.forking(self.procs.values(), self.templates.values())
        procs = _process.table_of_tree(os.getpid()) if self.memory.limit else (
            _process.table_of_children([os.getpid(), *self._boxed()]) if strays else {})
        if self.memory.limit:
            self._watch_memory(procs)
        if self.disk is not None:
            self.stop_over_disk()
            self._watch_disk(self.disk)
        for ex_id, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self._last_words(ex_id, proc)
            elif proc.pid_due and now > proc.pid_due:  # (sandboxed: it did not say its pid)
                self.apply(self.died(ex_id))
        for key, template in list(self.templates.items()):
            if template.overdue(now):  # (it says so)
                self._forks_failed(key, template, template.give_up())
            template.send_rest()
        if strays:
            self._strays_next = now + STRAYS_EVERY
            self._sweep_strays(procs)
        if self.forking:
            self.ahead.keep(now, not all(t.ready for t in self.templates.values()), self.nice)

    def _last_words(self, ex_id: int, proc: ExecutorProcess) -> None:
        """An executor that exited: what it sent before (a result, its output) is read
        first, as the loop would have (its end is then its pipe's), and it is dead."""
        for _ in range(PIPE_LAST_MESSAGES):
            if self.procs.get(ex_id) is not proc:
                break
            try:
                message = proc.read(None)
            except (PipeError, EOFError, OSError, ValueError):
                break  # (its end)
            if message is None:
                break  # (a message it did not finish)
            self._dispatch(ex_id, proc, message)
        if self.procs.get(ex_id) is proc:
            self.apply(self.died(ex_id))

    def drop_idle_templates(self, now: float, connected: set[str]) -> None:
        """Stop the templates ``_pool.idle_templates`` names (their memory goes back)."""
        used = {ex.key for ex in self.core.executors.values()}
        for key in idle_templates(self.templates, used, connected, now, self.core.idle_after):
            self.drop_template(key)

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
        for template in self.templates.values():
            template.kill()
        self.ahead.drop()
        if self.forking:
            self._sweep_strays(_process.table(), at_once=True)

"""Carrying out the core's actions: outcomes to their Mains (or the worker that delegated the
call, or a task of this worker's), executors spawned with their recipe and sandbox, tasks
handed to them, and what the Mains or the log hear of the core's other decisions.

The daemon's loop builds one ``Actions`` first (every role is given ``Actions.apply`` to
carry out what it decided) and hands it the roles it drives once they exist.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distrib import _shm
from distrib._logs import RateLimited
from distrib.wire._messages import Outcome
from distrib.wire._pipe_messages import Run
from distrib.worker import _sandbox
from distrib.worker._direct import LOCAL
from distrib.worker._events import (
    Action,
    Admit,
    Drained,
    GaveBack,
    Kill,
    MainDropped,
    Report,
    Rewaited,
    Send,
    Skip,
    Spawn,
    StuckChanged,
    StuckHandedBack,
    Vacating,
)
from distrib.worker._mains import Context, Mains
from distrib.worker._objects import Objects
from distrib.worker._outbox import Outbox
from distrib.worker._pool import Recipe
from distrib.worker._sandbox import Box, Sandboxes
from distrib.worker._settings import WorkerSettings
from distrib.worker._state import QueuedTask

if TYPE_CHECKING:  # (built after this, handed over by the daemon)
    from distrib.worker._executors import Executors
    from distrib.worker._owner import Owner
    from distrib.worker._redistribution import Calls
    from distrib.worker._serving import Serving
    from distrib.worker._supply import Supply

log = logging.getLogger("distrib.worker")
peer_log = RateLimited(log)  # for what a remote peer (or task code) can trigger


class Actions:
    """What the core decided, done: the one place its actions turn into writes."""

    executors: Executors
    supply: Supply
    calls: Calls
    serving: Serving
    owner: Owner

    def __init__(self, name: str, settings: WorkerSettings, runs: Path, mains: Mains,
                 objects: Objects, outbox: Outbox, on_drained: Callable[[], None]) -> None:
        self.name = name
        self.settings = settings
        self.runs = runs
        self.mains = mains
        self.objects = objects
        self.outbox = outbox
        self.on_drained = on_drained
        # Mains whose tasks waiting for their calls changed in this turn of the loop: told at
        # its end
        self.rewaited: set[bytes] = set()

    def apply(self, actions: list[Action]) -> None:
        """Carry out what ``Core`` decided; a failed write to an executor is its death."""
        executors = self.executors
        todo, i = actions, 0
        while i < len(todo):  # (a plain list: this runs for every task)
            action = todo[i]
            i += 1
            if isinstance(action, Report):
                self.report(action.task, action.outcome, action.info, action.frames,
                            action.shm)
            elif isinstance(action, Kill):
                executors.kill(action.ex_id)
            elif isinstance(action, Spawn):
                dist = self.supply.dists.get(action.key.dist)
                assert dist is not None and dist.env is not None
                context = self.mains.contexts[action.key.context]
                python = self.supply.envs.python(context.env) if context.env else None
                recipe = Recipe(action.key.threads, dist.env, dist.main, self.runs,
                                context.argv, context.environ, python, context.preload,
                                context.max_payload, self.owner.policy.nice,
                                *self._sandbox(context, dist.env, python))
                died = executors.spawn(action.key, recipe, action.ex_id)
                if died:
                    todo = [*todo, *died]
            elif not isinstance(action, (Send, Skip)):
                self._notice(action)
            else:
                proc = executors.procs.get(action.ex_id)
                if proc is None:
                    continue  # (stopped by an action before this one)
                try:
                    if isinstance(action, Send):
                        proc.run([self._run(run.run_id, run.task) for run in action.runs])
                    else:
                        proc.skip(action.run_id)
                except OSError as exc:
                    log.debug("executor %d: %s", proc.pid, exc, exc_info=True)
                    todo = [*todo, *executors.died(action.ex_id)]
        executors.forks.fork_waiting()

    def report(self, task: QueuedTask, outcome: Outcome, info: dict[str, str],
               frames: list[Any], shm: dict[str, int] | None = None) -> None:
        """A task's outcome, to whoever waits for it."""
        if outcome is Outcome.TIMEOUT:
            peer_log.info("task %d ran past its timeout; stopped it", task.task_id)
        if shm and (outcome is not Outcome.OK or task.peer not in self.mains):
            _shm.remove(list(shm))  # a result no one will read
            shm = None
        if task.reply == LOCAL:
            self.calls.direct.outcome(task.reply_id, outcome, info, frames)
        elif task.reply:
            if self.serving.delegated.pop((task.reply, task.reply_id), None) is not None:
                self.outbox.add(task.reply, task.reply_id, outcome, info, frames, None)
        elif task.peer in self.mains:
            self.outbox.add(task.peer, task.task_id, outcome, info, frames, shm)

    def _sandbox(self, context: Context, env: Path,
                 python: Path | None) -> tuple[Sandboxes | None, Box | None]:
        """How to build the sandbox of a Main's executors, and what it holds."""
        sandboxes = self.settings.sandboxes
        if sandboxes is None or not context.network:
            return None, None
        reads = _sandbox.reads(python, self.settings.cache_dir)
        if not context.shm:  # (else its objects are in /dev/shm, which it sees)
            objects = self.objects.where(context.peer)
            objects.mkdir(parents=True, exist_ok=True)
            reads += (objects,)
        return sandboxes, Box(env, self.runs, reads, context.network, context.shm)

    def _notice(self, action: Admit | Rewaited | StuckChanged | StuckHandedBack | Vacating
                | MainDropped | GaveBack | Drained) -> None:
        """What the Mains, the log or the loop hear of the core's decisions (``Admit``,
        ``MainDropped``, ``GaveBack`` answer the role that sent the event: it acts on them)."""
        if isinstance(action, Rewaited):
            self.rewaited.add(action.peer)
        elif isinstance(action, StuckChanged):
            self.rewaited.update(self.mains)  # (every Main hears it)
        elif isinstance(action, StuckHandedBack):
            # Nothing queued here can start: it goes back to its Mains (another worker may
            # run it; if none can, its Main says NestedDeadlock).
            log.info("every slot is held by a task waiting for its calls: %d queued task(s) "
                     "go back to their Mains", action.count)
        elif isinstance(action, Vacating):
            log.warning("worker %s vacates: its running tasks are stopped and go back to "
                        "their Mains (when_idle = \"vacate\")", self.name)
        elif isinstance(action, Drained):
            log.info("worker %s drained: its running tasks are done; leaving", self.name)
            self.on_drained()

    def _run(self, run_id: int, task: QueuedTask) -> Run:
        """What an executor needs to run ``task`` (as ``run_id``): besides its frames, its
        Main's folder of shared objects, its frames in /dev/shm, and whose /dev/shm takes
        large result frames."""
        main = self.mains.get(task.peer)
        results_to = main.pid if main is not None and main.shm and not task.reply else 0
        return Run(run_id, str(self.objects.where(task.peer)) if task.objects else "",
                   task.shm or {}, results_to, tuple(task.frames))

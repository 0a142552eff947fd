"""Templates: one interpreter per environment that imported it once, from which its executors
are forked (spawned instead when it cannot fork), the next one's interpreter started ahead.

Nothing here waits on a template: what it says (ready, the pids it forked) is read as the
loop polls it, and one that keeps a fork unanswered for ``_pool.FORK_TIMEOUT`` is stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from distrib._logs import RateLimited
from distrib.wire._pipe import PipeError
from distrib.wire._pipe_messages import NoFork, Ready
from distrib.worker import _pool
from distrib.worker._ahead import Ahead
from distrib.worker._events import EnvKey
from distrib.worker._pool import ExecutorProcess, Recipe, Template, idle_templates
from distrib.worker._sandbox import Boxed

log = logging.getLogger("distrib.worker")
peer_log = RateLimited(log)  # for what a remote peer (or task code) can trigger


class Forks:
    """The templates of one daemon, and the executors of ``procs`` they fork (or spawn).

    ``dead(ex_id)`` takes an executor as dead (no process will serve it)."""

    def __init__(self, procs: dict[int, ExecutorProcess], enabled: bool,
                 dead: Callable[[int], None]) -> None:
        self.procs = procs
        self.enabled = enabled  # (this daemon is a subreaper: it can adopt forked executors)
        self._dead = dead
        self.templates: dict[EnvKey, Template] = {}
        self.ahead = Ahead()  # the next template's interpreter, started ahead
        self._no_fork: set[EnvKey] = set()  # environments whose templates cannot fork
        self._to_fork: set[EnvKey] = set()  # ready templates asked for executors this turn

    def fds(self) -> list[int]:
        """The templates the loop polls: importing, or asked for forks."""
        return [t.fileno() for t in self.templates.values() if not t.ready or t.asked]

    def pids(self) -> list[int]:
        return [t.proc.pid for t in self.templates.values()]

    def boxed(self) -> list[int]:
        """The sandboxed templates: what an ended executor left goes to them."""
        return [t.proc.pid for t in self.templates.values() if isinstance(t.proc, Boxed)]

    def under_way(self) -> bool:
        """Whether a fork is under way: asked of a template and not answered, or a sandboxed
        executor's pid not said yet (such an executor runs, and no pid of it is known: it
        looks a stray)."""
        return any(t.asked for t in self.templates.values()) or any(
            ex.pid_due for ex in self.procs.values())

    def start(self, key: EnvKey, recipe: Recipe, ex_id: int) -> None:
        """Attach executor ``ex_id`` to a process: forked from its environment's template
        (started now if there is none; the executor waits for its import), else spawned."""
        ex = self.procs[ex_id]
        if not self.enabled or key in self._no_fork:
            _pool.spawn(recipe, ex)
            return
        now = time.monotonic()
        template = self.templates.get(key)
        waiting: list[int] = []
        if template is None or template.proc.poll() is not None:
            if template is not None:  # (it died: what waited for it waits for the next)
                asked, waiting = self._stop(key)
                self._take_dead(asked, [])
            try:
                template = self.templates[key] = Template.start(recipe, now,
                                                                self.ahead.take(now))
            except OSError:  # (the caller takes ``ex_id`` as dead; so are those it carried)
                self._take_dead([], waiting)
                raise
        template.last_used = now
        template.waiting += [*waiting, ex_id]  # (forked with the others of this turn, at once)
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

    def on_readable(self, events: dict[Any, int]) -> None:
        for key, template in list(self.templates.items()):
            if template.fileno() not in events:
                continue
            if not template.ready:
                self._on_template(key, template)
            elif template.asked:
                self._forks_failed(key, template, template.answered(time.monotonic()))

    def tick(self, now: float, nice: int) -> None:
        for key, template in list(self.templates.items()):
            if template.overdue(now):  # (it says so)
                self._forks_failed(key, template, template.give_up())
            template.send_rest()
        if self.enabled:
            self.ahead.keep(now, not all(t.ready for t in self.templates.values()), nice)

    def _fork(self, key: EnvKey, template: Template) -> None:
        waiting = [ex for ex_id in template.waiting
                   if (ex := self.procs.get(ex_id)) is not None and ex.theirs is not None]
        template.waiting.clear()
        self._forks_failed(key, template, template.ask(waiting, time.monotonic()))

    def _forks_failed(self, key: EnvKey, template: Template,
                      failed: list[ExecutorProcess]) -> None:
        """``template`` did not fork ``failed``: it stops, and all it was asked are spawned."""
        if failed:
            asked, waiting = self._stop(key)  # (waiting: asked for in this turn)
            failed += asked
            self._spawn(template.recipe,
                        waiting + [i for i, ex in self.procs.items() if ex in failed])
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
        _, waiting = self._stop(key)  # (none was asked of it: it was not ready)
        return self._spawn(template.recipe, waiting)

    def _spawn(self, recipe: Recipe, ex_ids: list[int]) -> None:
        for ex_id in ex_ids:
            ex = self.procs.get(ex_id)
            if ex is not None and ex.theirs is not None:
                try:
                    _pool.spawn(recipe, ex)
                except OSError as exc:
                    log.error("cannot start an executor: %s", exc)
                    self._dead(ex_id)

    def dist_replaced(self, dist: str) -> None:
        """A distribution's tree is removed: its templates stop."""
        for key in [k for k in self.templates if k.dist == dist]:
            self.drop(key)

    def drop(self, key: EnvKey) -> None:
        """Stop the template of ``key``: the executors it was asked for, or that wait for it,
        are dead (no fork will come for them)."""
        self._take_dead(*self._stop(key))

    def _stop(self, key: EnvKey) -> tuple[list[ExecutorProcess], list[int]]:
        """Stop the template of ``key``. The executors it was asked for and did not answer
        (with new sockets), and those waiting for its import, are the caller's: to start
        otherwise, or to take as dead."""
        template = self.templates.pop(key, None)
        if template is None:
            return [], []
        template.kill()
        waiting, template.waiting = template.waiting, []
        return template.give_up(), waiting

    def _take_dead(self, asked: list[ExecutorProcess], waiting: list[int]) -> None:
        for ex_id in [i for i, ex in self.procs.items() if ex in asked or i in waiting]:
            self._dead(ex_id)

    def drop_idle(self, now: float, used: Iterable[EnvKey], connected: set[str],
                  idle_after: float) -> None:
        """Stop the templates ``_pool.idle_templates`` names (their memory goes back)."""
        for key in idle_templates(self.templates, set(used), connected, now, idle_after):
            self.drop(key)

    def close(self) -> None:
        for template in self.templates.values():
            template.kill()
        self.ahead.drop()

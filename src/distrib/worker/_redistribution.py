"""Calls made inside tasks running here: an executor's call goes to its Main (relayed), or this
worker places it itself (``_direct``: here, or on another worker of the same Main); how it
ended goes back to the caller's executor.

This module is the glue between the executors, the core and ``Direct``: it is ``Direct``'s
``Host``, answering its questions about this worker and applying the effects of its decisions
(``_placement``); the placing itself is ``Direct``'s.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import zmq

from distrib.wire import _facts
from distrib.wire import _messages as m
from distrib.wire import _pipe_messages as pm
from distrib.wire._keys import KeyPair
from distrib.worker._core import Core
from distrib.worker._direct import FIRST_ID, LOCAL, Direct
from distrib.worker._dists import Distributions
from distrib.worker._events import Action, CancelAsked, TaskCalled, TaskQueued
from distrib.worker._executors import Executors
from distrib.worker._mains import Mains
from distrib.worker._placement import (
    CancelHere, Deliver, Effect, Here, PlacedCall, Relay, RunHere, Tell)
from distrib.worker._state import QueuedTask

log = logging.getLogger("distrib.worker")


class Calls:
    """Calls of the tasks running here, to their Mains or placed by ``direct``."""

    def __init__(self, name: str, ctx: zmq.Context[Any], key: KeyPair | None,
                 lost_after: float, mains: Mains, core: Core, executors: Executors,
                 dists: Distributions, send: Callable[[bytes, m.Message], None],
                 apply: Callable[[list[Action]], None]) -> None:
        self.name = name
        self.mains = mains
        self.core = core
        self.executors = executors
        self.send = send
        self.apply = apply
        self.dists = dists
        self.platform = _facts.platform_tag()
        self.direct = Direct(name, ctx, key, lost_after, self)

    def on_call(self, ex_id: int, call: pm.Call) -> None:
        """The running task of ``ex_id`` called a @distributed function: its Main runs it
        (relayed), or this worker places it itself (direct; ``_direct``)."""
        run = self.core.running(ex_id)
        if run is None or run.run_id != call.run_id:
            return  # (a task stopped meanwhile)
        self.apply(self.core.handle(TaskCalled(ex_id, call.run_id), time.monotonic()))
        task, main = run.task, self.mains.get(run.task.peer)
        if main is None or main.hello is None:
            return
        how = self.direct.mode(call.redistribution, main.hello.redistribution,
                               bool(call.outputs))
        # How errors name the parent: as its Main does, or (one placed by a worker) by the
        # parent's number for it, and the chain above.
        above = self.direct.children.get(task.reply_id) if task.reply == LOCAL else None
        label = above.label if above is not None else str(task.reply_id or task.task_id)
        parent = f"{call.caller}#{label}" + (f", {above.chain.removeprefix('called by ')}"
                                             if above is not None else "")
        if how != "relayed":
            placed = PlacedCall(next(self.direct.ids), task.peer, ex_id, call.run_id, task.task_id,
                                call.child, call.name, f"{label}.{call.child}",
                                f"called by {parent}", tuple(call.platforms) or ("*",),
                                call.threads, call.retries, call.timeout, task.dist,
                                task.depth + 1, list(call.frames), how)
            if self.direct.place(placed, time.monotonic()):
                return
        self.direct.relay(task.peer, ex_id, call.run_id, call.child, task.task_id)
        self.send(task.peer, m.Call(task.task_id, call.child, call.name, call.platforms,
                                    call.threads, call.retries, call.timeout, call.outputs,
                                    task.depth + 1,
                                    parent if task.task_id >= FIRST_ID else "",
                                    frames=call.frames))

    def on_cancel_child(self, ex_id: int, run_id: int, number: int) -> None:
        """The running task of ``ex_id`` cancelled its call ``number``: wherever it went."""
        run = self.core.running(ex_id)
        if (run is not None and run.run_id == run_id
                and not self.direct.cancel(ex_id, run_id, number)):
            self.send(run.task.peer, m.CancelChild(run.task.task_id, number))

    def relay(self, child: PlacedCall) -> None:
        """A call placed here goes through its Main after all (it was handed back)."""
        self.direct.relay(child.main, child.ex_id, child.run_id, child.number, child.parent)
        self.send(child.main, m.Call(child.parent, child.number, child.name,
                                     list(child.platforms), child.threads, child.retries,
                                     child.timeout, [], child.depth,
                                     child.chain.removeprefix("called by ")
                                     if child.parent >= FIRST_ID else "",
                                     frames=tuple(child.frames)))

    def on_child_result(self, peer: bytes, msg: m.ChildResult) -> None:
        """A call of a task running here ended: to its executor (if the task still runs)."""
        for ex_id, ex in self.core.executors.items():
            run = ex.runs[0] if ex.runs else None
            if (run is not None and ex.nests and run.task.peer == peer
                    and run.task.task_id == msg.parent):  # (only a task that made calls)
                self.direct.relay_answered(peer, ex_id, run.run_id, msg.child)
                if msg.status in ("ok", "error"):
                    self.executors.to_parent(ex_id, run.run_id, msg.child, msg.status, msg.info,
                                             list(msg.frames))
                return

    # --- ``Direct``'s host: what it asks of this worker, and what it has done here ---------------

    def hello(self, main_peer: bytes) -> m.Hello | None:
        """The Hello this worker says to another one to send it calls of a Main."""
        main = self.mains.get(main_peer)
        if main is None or main.hello is None:
            return None
        return msgspec.structs.replace(main.hello, name=f"worker {self.name} for {main.name}",
                                       pid=os.getpid(), shm_probe=[], warm=0, delegate=main.key)

    def here(self, main: bytes, threads: int) -> Here:
        """This worker for a call of ``main``: whether it takes the call now (lending, and
        its quota allows), and its slots busy or waited for, per slot."""
        return Here(self.platform,
                    not self.core.paused and self.core.offered(main) >= threads,
                    (self.core.busy + self.core.waiting()) / max(1, self.core.capacity))

    def runs(self, ex_id: int, run_id: int) -> bool:
        return self.executors.parent_runs(ex_id, run_id)

    def running_here(self, cid: int) -> bool:
        return any(ex.runs and ex.runs[0].task.reply == LOCAL
                   and ex.runs[0].task.task_id == cid
                   for ex in self.core.executors.values())

    def manifest(self, dist: str) -> bytes | None:
        return self.dists.manifest(dist)

    def blob(self, dist: str, digest: str) -> bytes | None:
        return self.dists.blob(dist, digest)

    def apply_effects(self, effects: Sequence[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, RunHere):
                self._run_here(effect.child)
            elif isinstance(effect, CancelHere):
                self.apply(self.core.handle(CancelAsked(effect.child.main, effect.child.cid),
                                            time.monotonic()))
            elif isinstance(effect, Deliver):  # (to its parent, if that still runs)
                self.executors.to_parent(effect.child.ex_id, effect.child.run_id,
                                         effect.child.number, effect.status, effect.info,
                                         effect.frames)
            elif isinstance(effect, Relay):
                self.relay(effect.child)
            elif isinstance(effect, Tell):
                self.send(effect.main, effect.message)

    def _run_here(self, child: PlacedCall) -> None:
        main = self.mains.get(child.main)
        if main is not None:
            self.apply(self.core.handle(TaskQueued(QueuedTask(
                child.main, child.cid, child.dist, child.threads, child.timeout, child.frames,
                main.context, main.env, depth=child.depth, reply=LOCAL, reply_id=child.cid)),
                time.monotonic()))

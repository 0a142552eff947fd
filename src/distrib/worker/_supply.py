"""What tasks need before they start, fetched and built for the Mains that send them: their
workspace distributions, their Python environments, the shared objects they pass, and
executors started ahead of a Main's first call (warming).

``Distributions``, ``Environments``, ``Objects`` and ``Warming`` keep the state; this module
asks the Mains for what is missing and tells the core what became ready or failed.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distrib._errors import WorkspaceError
from distrib._logs import RateLimited
from distrib.wire import _envspec
from distrib.wire import _messages as m
from distrib.wire._messages import Outcome
from distrib.wire._record import ErrorRecord
from distrib.worker._core import Core
from distrib.worker._diskuse import DiskUse, measure_disk
from distrib.worker._dists import Change, Distributions, Failed, Ready
from distrib.worker._envs import EnvPolicy, Environments
from distrib.worker._events import (
    Action,
    DistReady,
    DistReplaced,
    DistUnavailable,
    EnvDropped,
    EnvFailed,
    EnvReady,
    ObjectsArrived,
    ObjectsUnavailable,
    Spawn,
    TaskDeferred,
    Warm,
)
from distrib.worker._executors import Executors
from distrib.worker._mains import MainPeer, Mains
from distrib.worker._objects import Objects
from distrib.worker._state import QueuedTask
from distrib.worker._warming import Warming
from distrib.workspace._store import Store

log = logging.getLogger("distrib.worker")
peer_log = RateLimited(log)  # for what a remote peer (or task code) can trigger

Report = Callable[[QueuedTask, Outcome, dict[str, str], list[Any]], None]


class Supply:
    """Workspaces, environments, shared objects and warm executors, as Mains' tasks need
    them."""

    def __init__(self, name: str, store: Store, envs_root: Path, env_policy: EnvPolicy,
                 wake: Callable[[], None], mains: Mains, core: Core, objects: Objects,
                 executors: Executors, send: Callable[[bytes, m.Message], None],
                 apply: Callable[[list[Action]], None], report: Report) -> None:
        self.name = name
        self.mains = mains
        self.core = core
        self.objects = objects
        self.executors = executors
        self.send = send
        self.apply = apply
        self.report = report
        self.dists = Distributions(store, send, self._dist_replaced, core.active_dists,
                                   lambda dist: core.queues.first_peer_with(dist))
        self.envs = Environments(envs_root, env_policy, lambda: name, wake, self._envs_in_use,
                                 self._env_dropped)
        self.envs.blob_path = store.blob_path
        self.specs: dict[str, _envspec.EnvSpec] = {}  # Python environments Mains described
        self.warming = Warming()  # Mains whose Hello asked for executors ahead of their calls
        self.disk_use = DiskUse(functools.partial(measure_disk, self.envs, store))

    # --- warm executors ----------------------------------------------------------------------

    def warm(self, main: MainPeer, dist: str, count: int, serving: bool) -> None:
        """Fetch ``dist`` now and start ``count`` executors of it once it is here, ahead of
        the Main's first call (``Warmed`` tells it when they are ready, or why not)."""
        why = main.env_problem or ("" if serving else "the worker is not lending now")
        if why:
            self.send(main.peer, m.Warmed(dist, 0, why))
            return
        self.warming.wish(main.peer, dist, main.env, main.context,
                          min(count, self.core.capacity))
        self.fetch(dist, main.peer, main)
        self._start_warm()

    def fetch(self, dist: str, source: bytes, main: MainPeer) -> None:
        """Ask for what tasks of ``main`` in ``dist`` need: the workspace (from ``source``,
        the Main or its delegate) and the Main's Python environment."""
        self.dists.request(dist, source, self.mains.contexts[main.context].preload)
        if main.env and not self.core.env_is_ready(main.env):
            self.need_env(main.env, main.peer)

    def _start_warm(self) -> None:
        now = time.monotonic()
        for peer, wish in self.warming.startable(self.core.dist_is_ready,
                                                 self.core.env_is_ready):
            assert wish.key is not None
            hellos = [(p.hello, p.context) for p in self.mains.values()]
            used = None if any(h is None for h, _ in hellos) else tuple(
                (h.dist, c) for h, c in hellos if h is not None)  # (a delegate's: none stop)
            actions = self.core.handle(Warm(wish.key, peer, wish.count, used), now)
            wish.started = sum(isinstance(a, Spawn) for a in actions)
            self.apply(actions)

    def tell(self, messages: list[tuple[bytes, m.Warmed]]) -> None:
        for peer, msg in messages:
            self.send(peer, msg)

    # --- shared objects ----------------------------------------------------------------------

    def plan_objects(self, task: QueuedTask, objects: dict[str, int]) -> bool:
        """Ask for the shared objects ``task`` passes that are not here; False if it ended
        (deferred, or its objects can never fit)."""
        peer = task.peer
        account = self.core.account(peer)
        plan = self.objects.plan(peer, objects, self.core.objects_in_use,
                                 b"" if account == peer else account)
        if plan.error:
            self.report(task, Outcome.ERROR, ErrorRecord(
                "distrib.SerializationError", f"worker {self.name}: {plan.error}").to_wire(), [])
            return False
        if plan.defer:
            self.apply(self.core.handle(TaskDeferred(task), time.monotonic()))
            return False
        task.waits = plan.waits
        if plan.ask:
            self.send(peer, m.NeedObjects(plan.ask))
        return True

    def on_objects(self, peer: bytes, msg: m.Objects) -> None:
        arrived: set[str] = set()
        at = 0
        files = msg.files or [""] * len(msg.names)
        for name, count, file in zip(msg.names, msg.counts, files):
            frames = list(msg.frames[at:at + count])
            at += count
            try:
                why = self.objects.linked(peer, name, file) if file else \
                    self.objects.arrived(peer, name, frames)
            except OSError as exc:
                why = f"this worker could not store it: {exc}"
                log.error("cannot store a shared object of Main %s: %s", self.mains[peer].name,
                          exc)
            if why == "":
                arrived.add(name)
            elif why is not None:
                self.objects_failed(peer, [name], why)
        self.apply(self.core.handle(ObjectsArrived(peer, frozenset(arrived)), time.monotonic()))

    def objects_failed(self, peer: bytes, names: list[str], why: str) -> None:
        self.objects.failed(peer, names)
        self.apply(self.core.handle(ObjectsUnavailable(peer, frozenset(names), ErrorRecord(
            "distrib.SerializationError", f"worker {self.name} could not get a shared object "
            f"the call passes: {why}").to_wire()), time.monotonic()))

    # --- Python environments -----------------------------------------------------------------

    def need_env(self, env: str, peer: bytes) -> None:
        """A task of ``peer`` waits for the Python environment ``env``: build it (once)."""
        spec = self.specs[env]
        joined, missing = self.envs.request(spec, peer, lambda d: self.dists.store.has(d))
        if not joined:
            return
        if missing:
            self.send(peer, m.NeedBlobs(env, sorted(missing)))
        text = f"building environment: {spec.summary()} (Python {spec.python})"
        peer_log.info("environment %s for Main %s: %s", env[:12], self.mains[peer].name, text)
        self.send(peer, m.EnvProgress(text))

    def on_wheels(self, peer: bytes, msg: m.Blobs) -> None:
        sizes = {w.digest: w.size for w in self.specs[msg.dist].wheels}
        for digest, frame in zip(msg.hashes, msg.frames):
            if digest not in sizes or msg.dist not in self.envs.wanted(digest):
                continue
            try:
                self.dists.store.put_compressed(digest, frame.buffer if hasattr(frame, "buffer")
                                                else frame, sizes[digest])
            except WorkspaceError as exc:
                self.reject_wheels(msg.dist, peer, f"a wheel this Main sent is bad: {exc}")
                return
            self.envs.blob_arrived(digest)

    def reject_wheels(self, env: str, peer: bytes, why: str) -> None:
        """A Main cannot provide the wheels of a build: its tasks of it fail; other Mains
        waiting for the same build send their own."""
        info = self.envs.reject(env, peer, why)
        if info is not None:
            self.apply(self.core.handle(EnvFailed(env, info, peer), time.monotonic()))
            self.tell(self.warming.fail(why, env=env, peer=peer))

    def on_builds(self) -> None:
        for done in self.envs.finished():
            self.disk_use.refresh()
            if done.info is None:
                peer_log.info("environment %s built in %.1f s", done.env_id[:12], done.seconds)
                self.apply(self.core.handle(EnvReady(done.env_id), time.monotonic()))
                self._start_warm()
                for peer in done.peers & set(self.mains):
                    self.send(peer, m.EnvProgress(
                        f"environment built in {done.seconds:.1f} s"))
            else:
                peer_log.warning("environment %s: %s", done.env_id[:12],
                                 done.info.get("message", ""))
                self.apply(self.core.handle(EnvFailed(done.env_id, done.info), time.monotonic()))
                self.tell(self.warming.fail(done.info.get("message", ""), env=done.env_id))

    def _envs_in_use(self) -> set[str]:
        """Environments of connected Mains, live executors and queued tasks."""
        executors = {self.mains.contexts[ex.key.context].env
                     for ex in self.core.executors.values()
                     if ex.key.context in self.mains.contexts}
        return {x.env for x in self.mains.values()} | executors | self.core.active_envs()

    def _env_dropped(self, env: str) -> None:
        """The built environment ``env`` was removed: built again before a task uses it."""
        self.apply(self.core.handle(EnvDropped(env), time.monotonic()))

    # --- workspace distributions -------------------------------------------------------------

    def on_change(self, change: Change) -> None:
        if isinstance(change, Ready):
            self.apply(self.core.handle(DistReady(change.dist), time.monotonic()))
            self._start_warm()
            self.disk_use.refresh()
        elif isinstance(change, Failed):
            self.apply(self.core.handle(DistUnavailable(change.dist, change.info, change.peer),
                                        time.monotonic()))
            self.tell(self.warming.fail(change.info.get("message", "fetch failed"),
                                        dist=change.dist, peer=change.peer))

    def _dist_replaced(self, dist: str) -> None:
        """A distribution's tree is removed (drifted, or evicted): its executors and templates
        stop."""
        self.apply(self.core.handle(DistReplaced(dist), time.monotonic()))
        self.executors.forks.dist_replaced(dist)
        self.disk_use.refresh()

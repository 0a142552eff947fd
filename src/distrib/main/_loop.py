"""The Main's I/O thread: the one loop that touches sockets and the scheduler.

    user threads -> Inbox (``_handoff``) -> Scheduler.assign -> Submit batches -> workers
    workers (on their DEALERs, or dialled in on the listener) -> Results -> Response._finish
            -> NeedManifest / NeedBlobs / NeedObjects -> the workspace, wheels, shared objects
            -> Welcome, Refused, WorkerState, monitor events -> ``_links``
    every tick: heartbeats, lost workers, reconnects (``_links``); tasks that cannot run fail,
    and warnings (the decisions are ``_health``'s)
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from distrib import _config, _shared, _shm
from distrib._errors import AuthError, DependencyError, DistribError, SerializationError, WorkerLost
from distrib.main import _health
from distrib.main._handoff import NONE, Inbox, in_shm, share_in_shm
from distrib.main._link import Link
from distrib.main._links import Links
from distrib.main._nested import Nested
from distrib.main._outcomes import Outputs, settle
from distrib.main._relocation import Relocation
from distrib.main._scheduler import Scheduler
from distrib.main._tracked import Task
from distrib.main._shipping import blob_messages
from distrib.main._stats import MAX_RUN, Stats
from distrib.wire import _codec, _transport
from distrib.wire import _messages as m
from distrib.wire._envspec import EnvSpec
from distrib.wire._link import LinkState
from distrib.wire._limits import batches
from distrib.wire._payload import join_payloads, split_payload
from distrib.workspace._manifest import Distribution

if TYPE_CHECKING:
    from distrib._local import LocalCluster
    from distrib._response import Response

log = logging.getLogger("distrib")

SHIP_NOTICE_BYTES = 16 << 20  # a shipment this large says so, and how long it took

class Loop:
    """The I/O thread's work: ``run`` until ``stopping``."""

    def __init__(self, settings: _config.Settings, dist: Distribution, env: EnvSpec,
                 wheels: dict[str, Path], scheduler: Scheduler, nested: Nested, links: Links,
                 inbox: Inbox, stats: Stats | None, warmed: threading.Event,
                 local: LocalCluster | None, started: float,
                 publish: Callable[[float], None]) -> None:
        self.settings = settings
        self.dist, self.env, self.wheels = dist, env, wheels
        self.scheduler = scheduler
        self.nested = nested
        self.links = links
        self.inbox = inbox
        self.stats = stats
        self.warmed = warmed
        self.local = local
        self.started = started
        self.publish = publish  # (with a dashboard) builds and swaps in its snapshot
        self.outputs = Outputs(dist.root)
        self.received: Counter[str] = Counter()  # messages from workers, by kind
        self.stopping = False
        self._published = 0.0
        self._warned: set[Any] = set()
        self.relocation = Relocation(scheduler, links, nested, self._send)
        self._poller = zmq.Poller()
        self._polled: dict[Any, tuple[Link, bool]] = {}  # socket -> its link, is a monitor
        self._polled_at = -1  # ``Link.sockets_changed`` when they were registered
        # Outcomes settled in this turn, and their counts: the waiting threads are woken at
        # its end, just before the poll. Woken earlier, a caller wants the interpreter lock
        # while this thread still holds it, and both threads sleep and wake once more a call.
        self._settled: list[Callable[[], None]] = []

    def run(self) -> None:
        now = time.monotonic()
        self.links.connect_all(now)
        next_tick = last_tick = now
        try:
            while not self.stopping:
                if self._polled_at != Link.sockets_changed:
                    self._poll_anew()
                timeout = int(max(0.0, next_tick - time.monotonic()) * 1000) + 1
                events = self._poller.poll(timeout)
                listening = False
                socks: list[tuple[Any, Link]] = []
                for sock, _ in events:
                    what = self._polled.get(sock)
                    if what is None:
                        if sock == self.inbox.reader.fileno() or sock is self.inbox.reader:
                            self.inbox.woken()
                        else:
                            listening = True
                    elif what[1]:  # (a monitor: handshake failures, closed connections)
                        if what[0].monitor is sock:
                            self.links.on_monitor(what[0], what[0].event())
                    else:
                        socks.append((sock, what[0]))
                for sock, link in socks:
                    if link.sock is sock:
                        self._drain(link)
                if listening:
                    self._drain_listener()
                self._take_incoming()
                self.links.adopt_found()
                self._dispatch()
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(now)
                    self.scheduler.observe(now - last_tick)
                    if self.relocation.durations.any():
                        self.relocation.speculate(now)
                    self.relocation.rebalance()
                    last_tick = now
                    next_tick = now + min(self.settings.heartbeat_interval, 0.2)
                self._wake_settled()
        except Exception:  # a bug here would hang every unwrap(): say so loudly
            log.exception("the distrib I/O thread failed; pending tasks cannot finish")
            raise
        finally:
            self._wake_settled()
            self.warmed.set()
            self.links.goodbye()

    def _finish(self, response: Response[Any], worker: str, value: Any,
                exc: BaseException | None) -> None:
        """(``settle``'s) Settle ``response`` at the end of this turn."""
        self._settled.append(partial(response._set_outcome, worker, value, exc))

    def _wake_settled(self) -> None:
        settled, self._settled = self._settled, []
        for finish in settled:
            finish()

    def _poll_anew(self) -> None:
        """Register the sockets of every link (and the inbox's, the listener's) with a new
        poller: done when a link's sockets changed, not at every turn."""
        self._polled_at = Link.sockets_changed
        self._poller = zmq.Poller()
        self._poller.register(self.inbox.reader, zmq.POLLIN)
        self._polled = {}
        for link in self.links.links.values():
            if link.sock is not None:
                self._polled[link.sock] = (link, False)
                self._poller.register(link.sock, zmq.POLLIN)
            if link.monitor is not None:
                self._polled[link.monitor] = (link, True)
                self._poller.register(link.monitor, zmq.POLLIN)
        for sock in self.links.listener.sockets() if self.links.listener else []:
            self._poller.register(sock, zmq.POLLIN)

    def _take_incoming(self) -> None:
        stats = self.stats
        incoming, cancels = self.inbox.incoming, self.inbox.cancels
        while incoming:
            task = incoming.popleft()
            self.scheduler.add(task)
            if task.speculative:
                self.relocation.speculating = True
            if stats is not None:
                stats.submitted(task.name)
        while cancels:
            task_id = cancels.popleft()
            withdrawn, link_id = self.scheduler.withdraw(task_id)
            if withdrawn is not None:
                self._count(withdrawn)
            if link_id is not None:
                self.links.links[link_id].send(m.Cancel([task_id]))
                for other in self.scheduler.drop_copies(task_id, keep=link_id):
                    self.links.links[other].send(m.Cancel([task_id]))

    def _dispatch(self) -> None:
        assigned = self.scheduler.assign()
        if assigned:
            now = time.monotonic()
            for link_id, tasks in assigned.items():
                self._send(link_id, tasks, now)

    def _send(self, link_id: str, tasks: list[Task], now: float) -> None:
        """Send tasks placed on a worker, in batches."""
        if not tasks:
            return
        link = self.links.links[link_id]
        specs: list[tuple[m.TaskSpec, list[Any]]] = []
        for t in tasks:
            t.sent, t.started = now, 0.0
            if t.response is not None:
                t.response._on_worker = True  # (its running() is true from now)
            frames, shm = (in_shm(t) if link.shm and _shm.worth(t.frames)
                           else (t.frames, NONE))
            inline, separate = split_payload(frames)
            objects = {k: s.nbytes for k, s in t.shared.items()} if t.shared else NONE
            specs.append((m.TaskSpec(t.task_id, self.dist.dist_id, t.threads, t.timeout,
                                     t.attempts, inline, len(separate), objects, shm,
                                     t.depth),
                          separate))
        for batch in batches(specs, _inline_bytes):
            link.send(m.Submit([spec for spec, _ in batch],
                               frames=tuple(f for _, fs in batch for f in fs)))
        if self.relocation.speculating:
            self.scheduler.progressed(link_id, now)

    # --- what workers send -------------------------------------------------------------------

    def _drain(self, link: Link) -> None:
        assert link.sock is not None
        for _ in range(1000):
            try:
                frames = link.receive(time.monotonic())
            except zmq.Again:
                return
            except DistribError as exc:
                log.warning("dropped a malformed message from worker %s: %s", link.label, exc)
                continue
            if frames is None:
                continue
            try:
                message = _codec.decode(frames)
            except DistribError as exc:
                log.warning("dropped a malformed message from worker %s: %s", link.label, exc)
                continue
            link.last_seen = time.monotonic()
            self._on_message(link, message)
            if link.sock is None or not _transport.readable(link.sock):
                return

    def _drain_listener(self) -> None:
        """What workers that dialled this Main sent, its ZAP questions, closed connections."""
        listener = self.links.listener
        assert listener is not None
        listener.answer_zap()
        for _ in range(1000):
            try:
                routing_id, frames = listener.receive()
            except zmq.Again:
                break
            link = self.links.dialled.get(routing_id)
            try:
                whole = link.receive_frames(frames, time.monotonic()) if link is not None \
                    else frames
                message = _codec.decode(whole) if whole is not None else None
            except DistribError as exc:
                log.warning("dropped a malformed message from %s: %s", link.label if link
                            else "a worker that dialled in", exc)
                continue
            if isinstance(message, m.Dial):
                self.links.on_dial(routing_id, message, *listener.origin(frames[0]))
            elif link is not None and message is not None:
                link.last_seen = time.monotonic()
                self._on_message(link, message)
        self.links.on_closed(listener.closed())

    def _on_message(self, link: Link, msg: m.Message) -> None:
        self.received[type(msg).__name__] += 1
        if isinstance(msg, m.Results):
            self._on_results(link, msg)
        elif isinstance(msg, m.Output):
            self._print(link, msg)
        elif isinstance(msg, m.Welcome):
            self.links.on_welcome(link, msg)
            self.relocation.rebalance()  # (a worker that joins takes queued tasks at once)
        elif isinstance(msg, m.Pong):
            self.links.on_pong(link, msg)
        elif isinstance(msg, m.Revoked):
            self.relocation.on_revoked(link, msg)
        elif isinstance(msg, m.Refused):
            self.links.on_refused(link, msg)
        elif isinstance(msg, m.NeedManifest):
            if msg.dist == self.dist.dist_id:
                link.send(m.Manifest(msg.dist, frames=(self.dist.encoded,)))
            else:
                link.send(m.DistFailed(msg.dist, "this Main does not have that distribution"))
        elif isinstance(msg, m.NeedBlobs):
            self._ship(link, msg)
        elif isinstance(msg, m.NeedObjects):
            self._send_objects(link, msg.names)
        elif isinstance(msg, m.Call):
            task = self.nested.on_call(link.link_id, msg)
            if task is not None and self.stats is not None:
                self.stats.submitted(task.name)
        elif isinstance(msg, m.CancelChild):
            self.nested.on_cancel(link.link_id, msg)
        elif isinstance(msg, m.Placed):
            log.debug("worker %s sent call %s %d of task %d to %s itself", link.label,
                      msg.name, msg.child, msg.parent, msg.worker)
            if self.stats is not None:
                self.stats.placed(msg.name)
        elif isinstance(msg, m.Waiting):
            self.nested.on_waiting(link.link_id, msg)
        elif isinstance(msg, m.WorkerState):
            self.links.on_state(link, msg)
        elif isinstance(msg, m.Warmed):
            if msg.why:
                log.info("worker %s started no executor ahead: %s", link.label, msg.why)
            self.warmed.set()
        elif isinstance(msg, m.EnvProgress):
            link.building = msg.text.startswith("building")
            log.warning("worker %s: %s", link.label, msg.text)

    def _ship(self, link: Link, need: m.NeedBlobs) -> None:
        """Send the workspace files (or wheels) a worker lacks; a large shipment says so, as
        it may take seconds at the first call."""
        workspace = need.dist == self.dist.dist_id
        size = sum(e.size for d in need.hashes if (e := self.dist.by_digest.get(d))) \
            if workspace else sum(p.stat().st_size for d in need.hashes
                                  if (p := self.wheels.get(d)) is not None and p.exists())
        what = "the workspace" if workspace else "the environment's wheels"
        log.log(logging.WARNING if size >= SHIP_NOTICE_BYTES else logging.DEBUG,
                "worker %s: shipping %s: %d files, %.0f MB", link.label, what,
                len(need.hashes), size / 1e6)
        start = time.monotonic()
        # (over a Unix socket, to this machine, compressing cost more than moving the bytes:
        # 3 MB took 63 ms here and 21 ms to inflate there, against 9 stored)
        level = 0 if link.address.startswith("ipc://") else 1
        for reply in blob_messages(self.dist, need, self.env.env_id, self.wheels, level):
            link.send(reply)
        if size >= SHIP_NOTICE_BYTES:
            log.warning("worker %s: %s sent (%.0f MB in %.1f s)", link.label, what, size / 1e6,
                        time.monotonic() - start)

    def _send_objects(self, link: Link, names: list[str]) -> None:
        """Send the shared objects a worker asks for, one message each (they are large)."""
        gone = []
        for name in names:
            obj = _shared.find(name)
            if obj is None:
                gone.append(name)
            elif link.shm and (file := obj.file() or share_in_shm(obj)) is not None:
                link.send(m.Objects([name], [0], [file]))  # (the worker links that file)
            else:
                link.send(m.Objects([name], [len(obj.frames)], frames=tuple(obj.frames)))
        if gone:
            link.send(m.ObjectsFailed(gone, "no pending call of this Main passes them"))

    def _on_results(self, link: Link, msg: m.Results) -> None:
        for spec, frames in join_payloads(msg.results, msg.frames):
            task = self.scheduler.finish(link.link_id, spec.task_id)
            if spec.shm:
                try:
                    frames = _shm.restore(frames, spec.shm, unlink=True)
                except (OSError, ValueError) as exc:
                    _shm.remove(list(spec.shm))
                    if task is not None:
                        self._lost(link, task, exc)
                    continue
            if task is None:
                continue
            ran = _seconds(spec.info.get("ran", ""))
            if ran is not None:
                self.scheduler.ran(link.link_id, ran)
            if task.speculative and not self.relocation.one_outcome(link, task, spec, ran):
                continue
            if task.task_id in self.nested.parents:
                self.nested.parents_moved([task])  # (its run here ended: its calls too)
                self.nested.finished(link.link_id, task.task_id)
            settle(task, spec, frames, link.name, f"{task.name}#{task.task_id} on worker "
                   f"{link.label}", self.scheduler, self.outputs, link.link_id, self._finish)
            if self.stats is not None:
                link.has_workspace, link.building = True, False
                if "ran" in spec.info:
                    self.stats.ran(task.name, spec.info["ran"])
                self._settled.append(partial(self._count, task, link.name, link.link_id,
                                             spec.status is m.Outcome.CRASHED))
        if self.relocation.speculating:  # (the slots these ended free start the next tasks there)
            self.scheduler.progressed(link.link_id, time.monotonic())

    def _lost(self, link: Link, task: Task, exc: Exception) -> None:
        """``task``'s result from ``link`` cannot be read from shared memory: the task fails
        with a SerializationError, as ``settle`` would settle it (at the end of the turn),
        unless a second copy of it still runs elsewhere and may give it."""
        if task.task_id in self.scheduler.copies and self.scheduler.copy_ended(link.link_id,
                                                                                task):
            return
        self._finish(task.response, link.name, None, SerializationError(
            f"the result of {task.name}#{task.task_id} on worker {link.label} was lost: its "
            f"shared memory cannot be read ({exc})"))
        self._settled.append(partial(self._count, task, link.name, link.link_id))

    def _count(self, task: Task, worker: str = "", reported_by: str = "",
               retried: bool = False) -> None:
        """For the dashboard (see ``Stats.counted``)."""
        if self.stats is not None:
            self.stats.counted(task, worker, reported_by, retried)

    def _print(self, link: Link, msg: m.Output) -> None:
        stream = sys.stderr if msg.stream == 2 else sys.stdout
        prefix = f"[{link.name}] "
        stream.write("".join(prefix + line + "\n" for line in msg.text.splitlines()))
        stream.flush()

    # --- every tick --------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self.nested.check_deadlock(now)
        self.links.tick(now)
        if self.stats is not None and _health.publish_due(now, self._published):
            self.publish(now)
            self._published = now
        self._warn_unmatched(now)
        self._fail_if_all_refused()
        self._fail_if_no_environment(now)
        if self.local is not None:
            self._supervise_local()

    def _supervise_local(self) -> None:
        """A local daemon that exits is replaced; its tasks are retried on the new one."""
        assert self.local is not None
        if self.local.gave_up:
            self._fail_pending(WorkerLost, "cannot run: the local worker kept dying")
            return
        for address, reason, restarted in self.local.replace_dead():
            link = next(l for l in self.links.links.values() if l.address == address)
            self.links.lose(link, LinkState.LOST, reason)
            if restarted:
                self.links.connect(link, time.monotonic())
            elif address in self.local.abandoned:
                self._fail_pending(WorkerLost, f"could not run: the local worker {reason} "
                                               f"{self.local.restarts + 1} times; see its "
                                               "messages above")

    def _fail_if_all_refused(self) -> None:
        """With every worker refusing our keys, tasks would wait forever: fail them clearly."""
        links = list(self.links.links.values())
        if _health.all_refuse_keys(link.state for link in links):
            self._fail_pending(AuthError, "cannot run: " + "; ".join(l.reason for l in links))

    def _fail_if_no_environment(self, now: float) -> None:
        """Every worker said (or showed) it cannot provide this Main's environment, and no
        other is on its way: tasks would wait forever; fail them naming each one's reason."""
        workers = list(self.scheduler.workers.values())
        connecting = any(link.state is LinkState.CONNECTING
                         for link in self.links.links.values())
        if not _health.no_environment([w.unable for w in workers], now, self.started,
                                      self.settings.connect_timeout, connecting,
                                      self.settings.discovery.enabled):
            return
        reasons = "; ".join(w.unable if w.name in w.unable else f"{w.name}: {w.unable}"
                            for w in workers)
        self._fail_pending(DependencyError, f"cannot run: no worker can provide its environment "
                           f"(Python {self.env.python}, {self.env.summary()}). {reasons}")

    def _fail_pending(self, error: type[DistribError], why: str) -> None:
        """End every task not yet sent to a worker with ``error`` ("task f#3 <why>")."""
        for task in self.scheduler.take_pending():
            task.response._set_outcome(None, exc=error(f"task {task.name}#{task.task_id} {why}"))
            self._count(task)

    def _warn_unmatched(self, now: float) -> None:
        ready = list(self.scheduler.workers.values())
        if not _health.warn_unmatched([w.unable for w in ready], now, self.started,
                                      self.settings.connect_timeout):
            return
        for req in self.scheduler.unmatched():
            if req in self._warned:
                continue
            self._warned.add(req)
            seen = ", ".join(f"{w.name} ({w.platform}, Python {', '.join(w.pythons)}, "
                             f"{w.slots} slots{'; lacks the environment' if w.unable else ''})"
                             for w in ready) or "none"
            log.warning("tasks need platform %s, %d thread(s) and Python %s; no connected "
                        "worker offers that (workers seen: %s). They wait for one.",
                        " or ".join(req[0]), req[1], self.scheduler.python, seen)


def _seconds(text: str) -> float | None:
    """A task's run time as its worker says (``info.ran``); None if that is no plausible
    number (a worker's word: not trusted to be one)."""
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if 0.0 <= seconds < MAX_RUN else None  # (nan and inf fail both)


def _inline_bytes(item: tuple[m.TaskSpec, list[Any]]) -> int:
    return sum(map(len, item[0].inline))

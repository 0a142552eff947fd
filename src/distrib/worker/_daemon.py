"""The worker daemon: one thread, one poll loop over the ROUTER socket and executor pipes.

    Mains --(DEALER/ROUTER, or Dials)--> Serving: decode + validate --> Core (queues, fair share)
                                                          --> Supply (workspaces, envs, objects)
    executors --(socketpair)--> Executors: ready / out / done / EOF (died) --> Core
    Core --> actions (report, spawn, send, skip, kill, ...) --> Actions --> Results to Mains
    owner --(control socket, policy file, hours)--> Owner --> Core (serving, paused, draining)

The decisions live in ``Core`` (pure: ``Core.handle(event, now)``), ``OwnerState`` (pure) and
``Distributions``; this loop moves bytes and hands what it reads to the role that turns it
into their events; ``Actions`` carries out the actions they return. The daemon never
unpickles a payload: call frames go to executors and result frames to the Main as they came.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import zmq

from distrib import _process
from distrib._logs import RateLimited
from distrib._scratch import remove_dead_runs, remove_tree
from distrib.wire import _facts, _transport
from distrib.wire import _messages as m
from distrib.wire._limits import MAX_MESSAGE_BYTES
from distrib.wire._messages import RefusalCode
from distrib.worker._actions import Actions
from distrib.worker._core import Core
from distrib.worker._diskwatch import DiskLimits, DiskWatcher
from distrib.worker._events import Tick, Turn
from distrib.worker._executors import Executors
from distrib.worker._gate import Gate
from distrib.worker._lingering import Lingering
from distrib.worker._mains import Mains
from distrib.worker._memory import MemoryWatch
from distrib.worker._objects import Objects
from distrib.worker._backlog import STUCK_FACTOR, Backlog
from distrib.worker._outbox import Outbox
from distrib.worker._owner import Owner, OwnerState
from distrib.worker._reach import Reach
from distrib.worker._redistribution import Calls
from distrib.worker._serving import Serving
from distrib.worker._settings import WorkerSettings
from distrib.worker._status import StatusBuilder
from distrib.worker._supply import Supply
from distrib.workspace._store import Store

log = logging.getLogger("distrib.worker")
DRAIN_SECONDS = 0.2  # most time one turn of the loop spends reading Mains' messages
SLOW_TURN = 2.0  # seconds: a turn of the loop longer than this is logged (Mains wait)
peer_log = RateLimited(log)  # for what a remote peer (or task code) can trigger


class Daemon:
    """A worker daemon serving as ``settings`` say (and, with a policy file, what that file
    says over the flags as it changes)."""

    def __init__(self, settings: WorkerSettings) -> None:
        s = self.settings = settings
        policy = settings.policy
        _process.more_open_files(s.endpoint.startswith("tcp://"))
        self.worker_id = uuid.uuid4().hex
        remove_dead_runs(s.cache_dir / "runs")
        self.runs = s.cache_dir / "runs" / f"{os.getpid()}-{self.worker_id[:8]}"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.gate = Gate(self.ctx, s.key, s.authorized,  # before the bind: ZAP must be first
                         frozenset(key for _, key in s.connect))
        self.sock, self.address = _transport.router(self.ctx, s.endpoint, s.key, bounded=True)
        self._backlog = Backlog(self._where)
        self.gate.watch(self.sock)
        # Without a name, the host and the port it listens on (known only now, and named
        # before anything that names this worker is built: direct calls carry it).
        self.name = s.name or f"{socket.gethostname()}:" \
            f"{self.address.rsplit(':', 1)[-1].rsplit('/', 1)[-1]}"
        self.mains = Mains()
        if s.sandboxes is not None:  # (a Main's sandbox: the network its key's line says)
            self.mains.network = lambda key: self.gate.quota(key).network or s.task_network
        # (a seed of its own: Mains join its round of turns in an order of its own, not the
        # order they reached every worker in; see ``_state``)
        self.core = Core(policy.threads, s.idle_after, s.max_queued, s.max_parked,
                         spread=int.from_bytes(os.urandom(8), "big"))
        self.core.congested = self._backlog.held  # (their tasks wait: ``_backlog``)
        self.objects = Objects(self.runs / "objects", s.max_objects, s.max_objects_total)
        Objects.remove_stale()
        self.memory = MemoryWatch(policy.max_task_memory, policy.max_memory)
        store = Store(s.cache_dir, s.max_cache)
        store.clean_leftovers()
        self._outbox = Outbox()
        self._stop = False
        self.actions = Actions(self.name, s, self.runs, self.mains, self.objects, self._outbox,
                               self.request_stop)
        self._apply, self._report = self.actions.apply, self.actions.report
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # The roles, each given what it works with (``actions`` and ``_send`` carry out what
        # they decide):
        disk = DiskWatcher(DiskLimits(policy.max_task_disk, store.max_bytes), self.runs,
                           s.cache_dir, self.name, self._wake_loop)
        self.executors = Executors(self.name, self.runs, policy.nice, self.core, self.memory,
                                   self._apply, disk)
        # (a template in a sandbox starts its own interpreter)
        self.executors.forks.ahead.enabled = s.sandboxes is None
        self.supply = Supply(self.name, store, s.cache_dir / "venvs", s.env_policy,
                             self._wake_loop, self.mains, self.core, self.objects,
                             self.executors, self._send, self._apply, self._report)
        self.calls = Calls(self.name, self.ctx, s.key, s.lost_after, self.mains, self.core,
                           self.executors, self.supply.dists, self._send, self._apply)
        state = OwnerState(policy.when_idle, time.monotonic())
        self.serving = Serving(self.name, self.worker_id, s.key is not None, self.mains,
                               self.core, self.gate, state, self.memory, self.supply,
                               self.calls, self._outbox, self._send, self._apply, self._report)
        self.owner = Owner(self.name, state, s.cache_dir, policy, s.flags or policy,
                           s.policy_file, self.core, self.executors, self.memory, self._apply,
                           self.serving.tell_all)
        self.reach = Reach(self.ctx, s, self.gate, self.address, lambda: m.Dial(
            m.PROTOCOL_VERSION, self.worker_id, self.name), self.serving.receive,
            self._dial_closed, time.monotonic())
        self.dials = self.reach.dials
        self.owner.on_connect = self.reach.set_dials
        self.status = StatusBuilder(self.name, self.worker_id, self.address, s.key,
                                    time.monotonic(), self.core, self.mains, self.gate,
                                    self.owner, self.executors, self.supply, self.serving,
                                    self.calls, self.dials)
        self.reach.on_relayed = self.status.set_relayed
        self.reach.set_relay(policy.relay)
        self.owner.on_relay = self.reach.set_relay
        # What each asks of another, built after it:
        self.executors.builds = self.supply.envs.pids
        self.executors.on_call = self.calls.on_call
        self.executors.on_output = self.serving.forward_output
        self.executors.on_cancel_child = self.calls.on_cancel_child
        self.serving.status = self.status.status
        self.serving.backlog = self._backlog
        actions = self.actions
        actions.executors, actions.supply, actions.calls = self.executors, self.supply, self.calls
        actions.serving, actions.owner = self.serving, self.owner
        self.owner.on_stop = self.request_stop
        self._announcer: Any = None
        self.lingering = Lingering(s.linger, s.users_lock, time.monotonic(), Path(
            s.endpoint.removeprefix("ipc://")) if s.endpoint.startswith("ipc://") else None) \
            if s.linger else None

    def _wake_loop(self) -> None:
        """(any thread) Make the loop's poll return: a build ended, or a task wrote too
        much."""
        try:
            self._wake_w.send(b"e")
        except OSError:
            pass

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (or the parent named by ``exit_with_parent`` dies)."""
        signal.set_wakeup_fd(self._wake_w.fileno())
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_sighup)
        next_tick = read = time.monotonic()  # (read: when it last read every socket)
        direct, control = self.calls.direct, self.owner.control
        polled: tuple[Any, ...] = ()
        poller = zmq.Poller()
        try:
            while not self._stop:
                # (a new poller only when what it watches changed: most turns it has not)
                watched = (self.sock, self._wake_r, *self.gate.sockets(), *direct.sockets(),
                           *self.dials.sockets(), control.fileno(), *self.executors.fds())
                writing = self.executors.writing()
                if (watched, writing) != polled:
                    polled, poller = (watched, writing), zmq.Poller()
                    for sock in watched:
                        poller.register(sock, zmq.POLLIN)
                    for fd in writing:
                        poller.register(fd, zmq.POLLIN | zmq.POLLOUT)
                timeout = max(0.0, next_tick - time.monotonic())
                if self._backlog:
                    timeout = min(timeout, self._backlog.retry)
                events = dict(poller.poll(int(timeout * 1000) + 1))
                began = time.monotonic()
                for sock in self.gate.sockets():
                    if sock in events:
                        self.gate.on_readable(sock)
                self._drop_closed()
                if self.sock in events:
                    self._drain_socket()
                for sock in direct.sockets():
                    if sock in events:
                        direct.on_readable(sock, time.monotonic())
                for sock in self.dials.sockets():
                    if sock in events:
                        self.dials.on_readable(sock)
                self.executors.on_readable(events)
                if self._wake_r.fileno() in events:
                    self._drain_wake()
                    self.supply.on_builds()
                    self.executors.stop_over_disk()
                if control.fileno() in events:
                    self.owner.on_control()
                now = time.monotonic()
                if now - read > SLOW_TURN:  # (before the tick judges their silence)
                    self.mains.excuse(now - read, now)
                read = now
                ticked = now >= next_tick
                if ticked:
                    self._tick(now)
                    next_tick = now + min(self.settings.heartbeat_interval, 0.25)
                self._apply(self.core.handle(Turn(), now))
                rewaited = self.actions.rewaited
                while rewaited:  # (tasks waiting for their calls ended or lent)
                    peer = rewaited.pop()
                    if peer in self.mains:
                        self._send(peer, m.Waiting(*self.core.waiting_for_calls(peer)))
                if self.supply.warming:
                    self.supply.tell(self.supply.warming.done(self.core.executors.values()))
                self._outbox.flush(self._send)
                if self._backlog:
                    self._flush_backlog()
                ended = time.monotonic()
                if ended - began > SLOW_TURN:  # (nothing else is served meanwhile)
                    peer_log.warning("a turn of the loop took %.1f s (%.1f s reading, %s)",
                                     ended - began, now - began,
                                     f"a tick, then {ended - now:.1f} s" if ticked
                                     else "no tick")
        finally:
            self.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop = True

    def request_stop(self) -> None:
        """Leave at the end of this turn of the loop, as on SIGTERM."""
        self._stop = True

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.gate.request_reload()
        self.owner.on_sighup()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def announce(self, interfaces: tuple[str, ...]) -> None:
        """Advertise this worker on the LAN (mDNS) until it stops."""
        from distrib.wire._mdns import Announcer

        key = self.settings.key
        host, _, port = self.address.removeprefix("tcp://").rpartition(":")
        self._announcer = Announcer(
            self.name, host, int(port), key.public if key else None,
            {"platform": _facts.platform_tag(), "python": _facts.python_version(),
             "slots": str(self.core.capacity)}, interfaces)
        log.info("announcing %s on the LAN as %s", self.address, self.name)

    def close(self) -> None:
        self.owner.control.close()
        if self._announcer is not None:
            self._announcer.close()
        self.executors.close()
        self.supply.envs.close()
        self.objects.close()
        self.calls.direct.close()
        for peer in list(self.mains):
            self._send(peer, m.Refused(RefusalCode.SHUTTING_DOWN, "worker is shutting down"))
        self.reach.close()
        self.gate.close(self.sock)
        self.sock.close(linger=2000)  # (the last results and goodbyes still go out)
        self.ctx.term()
        remove_tree(self.runs)  # (an overlay's work folder has mode 000)
        log.info("worker %s stopped", self.name)
        if self.lingering is not None:  # (last: the next Main starts another daemon after)
            self.lingering.close()

    # --- bytes in and out --------------------------------------------------------------------

    def _send(self, peer: bytes, message: m.Message) -> None:
        main = self.mains.get(peer)
        now = time.monotonic()
        if main is not None:
            main.sent_at = now
        parts = _transport.parts(message, main.max_frame if main is not None
                                 else MAX_MESSAGE_BYTES)
        if self._backlog.send(peer, parts, now):
            peer_log.info("%s does not take what this worker sends as fast as its tasks make "
                          "it: its messages wait here and its tasks wait to start",
                          main.name if main is not None else f"peer {peer.hex()[:8]}")

    def _where(self, peer: bytes) -> tuple[zmq.Socket[Any] | None, bytes | None]:
        """The socket ``peer``'s messages go on, and its routing id there (``_backlog``)."""
        target = self.dials.by_peer.get(peer)
        return (self.sock, peer) if target is None else (target.sock, None)

    def _flush_backlog(self) -> None:
        for peer in self._backlog.flush(time.monotonic()):
            main = self.mains.get(peer)
            if main is not None:
                peer_log.info("%s takes this worker's messages again", main.name)
                self.serving.output_dropped(peer)

    def _drain_socket(self) -> None:
        # Bounded in messages and in time, so executors and timers get their turn: a Main
        # uploading large shared objects (each written out as it comes) must not hold back
        # the heartbeats every other Main waits for.
        until = time.monotonic() + DRAIN_SECONDS
        for _ in range(1000):
            try:
                frames = _transport.recv_frames(self.sock)
            except zmq.Again:
                return
            if len(frames) >= 2:
                self.serving.on_frames(frames)
            if not _transport.readable(self.sock) or time.monotonic() > until:
                return

    def _dial_closed(self, peer: bytes, why: str) -> None:
        """A Main this worker dialled closed the connection: its tasks stop now."""
        if peer in self.mains:
            self.serving.drop_main(peer, why)

    def _drop_closed(self) -> None:
        """A closed connection is a Main's death notice: its tasks stop now, not after the
        heartbeat timeout (a Main killed with -9 says no Goodbye)."""
        if not self.gate.closed:
            return
        self._drain_socket()  # what the Main sent before it closed (its Goodbye) goes first
        closed = self.gate.take_closed()
        limit = f"a message over the {MAX_MESSAGE_BYTES >> 20} MiB limit"
        quiet = self.serving.quiet_fds
        for fd in closed:
            peers = self.mains.on_connection(fd)
            for peer in peers:
                self.serving.drop_main(peer, "closed its connection without a goodbye (killed, "
                                       f"cut off, or dropped by libzmq for {limit})")
            if not peers and fd not in quiet:
                peer_log.info("a connection closed before a Hello or after its Main was dropped "
                              "(libzmq also drops a peer that sends %s)", limit)
            quiet.discard(fd)

    # --- timers ------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self.owner.tick()
        self.executors.tick(now)
        self.serving.sweep_shm()
        self.executors.forks.drop_idle(now, (ex.key for ex in self.core.executors.values()),
                                       {main.context for main in self.mains.values()},
                                       self.core.idle_after)
        self._apply(self.core.handle(Tick(), now))
        self.supply.dists.tick(now)
        self.calls.direct.tick(now, self.core.stuck())
        stuck = STUCK_FACTOR * self.settings.lost_after
        for peer in self._backlog.stuck(now, stuck):
            if peer in self.mains:
                self.serving.drop_main(peer, f"took nothing this worker sent it for {stuck:.0f} s "
                                       "(it stopped reading its connection)")
            self._backlog.drop(peer)
        self.serving.tick(now, self.settings.lost_after, self.settings.heartbeat_interval)
        if self.reach.tick(now, self.mains):
            self._stop = True
        self.status.tick(now)
        if self.gate.reload():
            self.serving.quotas_changed()
            self.reach.keys_changed()
        parent = self.settings.exit_with_parent
        if parent is not None and os.getppid() != parent:
            log.info("parent process %d is gone; stopping", parent)
            self._stop = True
        if self.lingering is not None and self.lingering.over(bool(self.mains), now):
            self._stop = True

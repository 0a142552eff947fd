"""The worker daemon: one thread, one poll loop over the ROUTER socket and executor pipes.

    Mains --(DEALER/ROUTER)--> daemon: decode + validate -> Queues (fair share)
                                       distributions: manifest -> missing blobs -> env tree
                                       slots free? -> executor for (dist, threads) -> run
    executors --(socketpair)--> daemon: ready / out / done / EOF (died) -> Results to the Main

The daemon never unpickles a payload: call frames go to executors and result frames to the
Main as they came.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from distrib._errors import ProtocolError, WorkspaceError
from distrib.wire import _codec, _facts, _keys, _transport
from distrib.wire._keys import KeyPair
from distrib.wire import _messages as m
from distrib.worker import _pool
from distrib.worker._pool import EnvKey, Executor
from distrib.worker._state import QueuedTask, Queues
from distrib.workspace._manifest import Entry, decode_manifest
from distrib.workspace._store import Store

log = logging.getLogger("distrib.worker")

BLOB_BATCH_BYTES = 64 * 1024 * 1024
TINY_TASK = 0.005  # seconds: executors of tasks this short get PREFETCH queued, others 1
PREFETCH = 4  # tasks waiting in an executor's pipe behind the running one
PREFETCH_BYTES = 16 * 1024  # only small calls: the pipe's buffer must hold them all
SKIP_GRACE = 0.05  # seconds to wait for a "skipped" before stopping a withdrawn task


@dataclass(eq=False)
class MainPeer:
    """A Main that said Hello."""

    peer: bytes
    main_id: str
    name: str
    forward_output: bool
    last_seen: float


@dataclass(eq=False)
class Dist:
    """What the daemon knows of one distribution."""

    state: str  # "manifest" (asked), "blobs" (asked), "ready", "failed"
    main: str | None = None
    entries: list[Entry] = field(default_factory=list)
    waiting_blobs: set[str] = field(default_factory=set)
    env: Path | None = None
    error: tuple[dict[str, str], list[Any]] | None = None
    source: bytes | None = None  # the Main it is being fetched from


@dataclass(eq=False)
class Running:
    """A task handed to an executor; ``key`` names it on the executor's pipe."""

    task: QueuedTask
    key: int
    started: float = 0.0
    deadline: float | None = None
    withdrawn: str | None = None  # "cancelled" or "drop" once asked to skip it
    stop_at: float | None = None  # withdrawn but became the running task: stop it then


class Daemon:
    """A worker daemon bound to ``endpoint`` offering ``slots`` slots."""

    def __init__(
        self,
        endpoint: str,
        slots: int,
        name: str,
        cache_dir: Path,
        heartbeat_interval: float = 1.0,
        lost_after: float = 10.0,
        exit_with_parent: int | None = None,
        key: KeyPair | None = None,
        authorized: Path | None = None,
    ) -> None:
        self.slots = slots
        self.name = name
        self.worker_id = uuid.uuid4().hex
        self.heartbeat_interval = heartbeat_interval
        self.lost_after = lost_after
        self.exit_with_parent = exit_with_parent
        self.store = Store(cache_dir)
        self.runs = cache_dir / "runs" / f"{os.getpid()}-{self.worker_id[:8]}"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.key = key
        self.authorized_file = authorized
        self.authorized: dict[str, str] = {}
        self._authorized_mtime = 0.0
        self._refused_logged: dict[str, float] = {}
        self.zap: zmq.Socket[Any] | None = None
        if key is not None:
            # ZAP: libzmq asks this socket about every CURVE handshake (authorized keys).
            self.zap = self.ctx.socket(zmq.REP)
            self.zap.setsockopt(zmq.LINGER, 0)
            self.zap.bind("inproc://zeromq.zap.01")
            self._reload_authorized(force=True)
        self.sock, self.address = _transport.router(self.ctx, endpoint, key)
        # Connection-level events: garbage, failed handshakes and oversized messages never
        # reach us as messages (libzmq drops them), so we learn of them here and log them.
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        self._unconfirmed: list[int] = []  # accepted connections not yet through a handshake
        self.mains: dict[bytes, MainPeer] = {}
        self.queues = Queues()
        self.dists: dict[str, Dist] = {}
        self.executors: list[Executor] = []
        self.busy = 0
        self.counters: dict[str, int] = dict.fromkeys(
            ("blobs_received", "tasks_done", "executors_started", "executors_crashed",
             "dropped", "dropped_connections"), 0)
        self._outbox: dict[bytes, list[tuple[m.ResultSpec, list[Any]]]] = defaultdict(list)
        self._stop = False
        self._announcer: Any = None
        self._next_key = 0
        self._unsent: dict[Executor, list[Running]] = {}  # handed out, to send this turn
        self._run_time: dict[EnvKey, float] = {}  # recent run time per environment (EWMA)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (or the parent named by ``exit_with_parent`` dies)."""
        signal.set_wakeup_fd(self._wake_w.fileno())
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_sighup)
        next_tick = time.monotonic()
        try:
            while not self._stop:
                poller = zmq.Poller()
                poller.register(self.sock, zmq.POLLIN)
                poller.register(self._wake_r, zmq.POLLIN)
                poller.register(self.monitor, zmq.POLLIN)
                if self.zap is not None:
                    poller.register(self.zap, zmq.POLLIN)
                for ex in self.executors:
                    poller.register(ex.fileno(), zmq.POLLIN)
                timeout = max(0.0, next_tick - time.monotonic())
                events = dict(poller.poll(int(timeout * 1000) + 1))
                if self.monitor in events:
                    self._on_connection_event()
                if self.zap is not None and self.zap in events:
                    self._answer_zap()
                if self.sock in events:
                    self._drain_socket()
                for ex in list(self.executors):
                    if ex.fileno() in events:
                        self._on_executor(ex)
                        # Messages read ahead into the pipe's buffer won't wake the poller.
                        while ex in self.executors and ex.pipe.buffered():
                            self._on_executor(ex)
                if self._wake_r.fileno() in events:
                    self._drain_wake()
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(now)
                    next_tick = now + min(self.heartbeat_interval, 0.25)
                self._schedule()
                self._flush_results()
        finally:
            self.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop = True

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self._authorized_mtime = -1.0  # reread at the next tick

    # --- authentication ----------------------------------------------------------------------

    def _reload_authorized(self, force: bool = False) -> None:
        if self.authorized_file is None:
            return
        try:
            mtime = self.authorized_file.stat().st_mtime
        except OSError as exc:
            if force:
                raise
            log.warning("cannot read authorized keys %s: %s; keeping the previous list",
                        self.authorized_file, exc)
            return
        if not force and mtime == self._authorized_mtime:
            return
        try:
            self.authorized = _keys.read_authorized(self.authorized_file)
        except Exception as exc:
            if force:
                raise
            self._authorized_mtime = mtime  # say it once per change of the file
            log.warning("authorized keys %s not reloaded (the previous list stays): %s",
                        self.authorized_file, exc)
            return
        self._authorized_mtime = mtime
        log.info("authorized keys: %d Main(s) from %s", len(self.authorized), self.authorized_file)

    def _on_connection_event(self) -> None:
        try:
            event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
        except zmq.Again:
            return
        kind, value = event["event"], event["value"]
        # libzmq names the connection (its fd) on accept and disconnect, not on handshake
        # events: those are matched to the oldest pending connection, an approximation.
        if kind == zmq.EVENT_ACCEPTED:
            self._unconfirmed.append(value)
        elif kind == zmq.EVENT_DISCONNECTED:
            if value in self._unconfirmed:
                self._unconfirmed.remove(value)
                self.counters["dropped_connections"] += 1
                log.warning("dropped a connection that never completed the ZeroMQ handshake "
                            "(garbage bytes, or another protocol such as HTTP)")
            else:
                log.info("a connection closed (as when a Main leaves; also how a peer is dropped "
                         "that sent a message over the %d MiB limit)",
                         _transport.MAX_MESSAGE_BYTES >> 20)
        else:  # a handshake ended: the peer spoke ZeroMQ, so its closing is not "garbage"
            if self._unconfirmed:
                self._unconfirmed.pop(0)
            if kind != zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.counters["dropped_connections"] += 1
            if kind not in (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_HANDSHAKE_FAILED_AUTH):
                # (refused keys are logged by _answer_zap)
                log.warning("dropped a connection whose ZeroMQ handshake failed (%s): a peer "
                            "with the wrong key for this worker, or without keys",
                            zmq.strerror(value))

    def _answer_zap(self) -> None:
        assert self.zap is not None
        try:
            request = self.zap.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        version, request_id, address = request[0], request[1], request[3]
        mechanism = request[5] if len(request) > 5 else b""
        key = z85.encode(request[6]).decode() if len(request) > 6 else ""
        ok = mechanism == b"CURVE" and (self.authorized_file is None or key in self.authorized)
        if not ok:
            now = time.monotonic()
            if now - self._refused_logged.get(key, -1e9) > 60:  # a refused client retries often
                self._refused_logged[key] = now
                log.warning("refused a Main from %s: key %s is not in the authorized keys %s",
                            address.decode(errors="replace"), key or "(none)",
                            self.authorized_file)
        self.zap.send_multipart([version, request_id, b"200" if ok else b"400",
                                 b"OK" if ok else b"key not authorized", key.encode(), b""])

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def announce(self, interfaces: tuple[str, ...]) -> None:
        """Advertise this worker on the LAN (mDNS) until it stops."""
        from distrib.wire._mdns import Announcer

        host, _, port = self.address.removeprefix("tcp://").rpartition(":")
        self._announcer = Announcer(
            self.name, host, int(port), self.key.public if self.key else None,
            {"platform": _facts.platform_tag(), "python": _facts.python_version(),
             "slots": str(self.slots)}, interfaces)
        log.info("announcing %s on the LAN as %s", self.address, self.name)

    def close(self) -> None:
        if self._announcer is not None:
            self._announcer.close()
        for ex in self.executors:  # signal all first, then reap: a hundred don't wait in turn
            ex.signal_kill()
        for ex in self.executors:
            ex.kill()
        self.executors.clear()
        for peer in list(self.mains):
            self._send(peer, m.Refused("worker is shutting down"))
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)
        if self.zap is not None:
            self.zap.close(0)
        self.ctx.term()
        shutil.rmtree(self.runs, ignore_errors=True)
        log.info("worker %s stopped", self.name)

    # --- messages from Mains -----------------------------------------------------------------

    def _send(self, peer: bytes, message: m.Message) -> None:
        try:
            _transport.send(self.sock, message, peer)
        except zmq.ZMQError as exc:
            log.debug("could not send %s: %s", type(message).__name__, exc)

    def _drain_socket(self) -> None:
        for _ in range(1000):  # bounded, so executors and timers get their turn
            try:
                frames = _transport.recv_frames(self.sock)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            peer = frames[0].bytes
            try:
                message = _codec.decode(frames[1:])
            except ProtocolError as exc:
                self.counters["dropped"] += 1
                main = self.mains.get(peer)
                log.warning("dropped a malformed message from %s: %s",
                            f"Main {main.name}" if main else f"peer {peer.hex()[:8]}", exc)
                if main is not None:  # a peer that breaks the protocol is not trusted further
                    self._drop_main(peer, "broke the protocol")
                    self._send(peer, m.Refused("unknown peer: malformed message; reconnect"))
                continue
            self._on_message(peer, message)

    def _on_message(self, peer: bytes, msg: m.Message) -> None:
        if isinstance(msg, m.StatusRequest):
            self._send(peer, m.Status(self.status()))
            return
        if isinstance(msg, m.Hello):
            self._on_hello(peer, msg)
            return
        main = self.mains.get(peer)
        if main is None:
            log.warning("dropped %s from a peer that has not said Hello", type(msg).__name__)
            self._send(peer, m.Refused("unknown peer: send Hello first"))
            return
        main.last_seen = time.monotonic()
        if isinstance(msg, m.Submit):
            self._on_submit(peer, msg)
        elif isinstance(msg, m.Cancel):
            for task_id in msg.task_ids:
                self._cancel(peer, task_id)
        elif isinstance(msg, m.Manifest):
            self._on_manifest(msg)
        elif isinstance(msg, m.Blobs):
            self._on_blobs(msg)
        elif isinstance(msg, m.DistFailed):
            self._fail_dist(msg.dist, {"type": "distrib.WorkspaceError", "message": msg.reason,
                                       "traceback": ""}, [])
        elif isinstance(msg, m.Goodbye):
            self._drop_main(peer, "said goodbye")
        elif isinstance(msg, m.Heartbeat):
            pass
        else:
            log.warning("dropped unexpected %s from Main %s", type(msg).__name__, main.name)

    def _on_hello(self, peer: bytes, msg: m.Hello) -> None:
        if msg.protocol != m.PROTOCOL_VERSION:
            log.warning("refused Main %s: protocol %d, this worker speaks %d",
                        msg.name, msg.protocol, m.PROTOCOL_VERSION)
            self._send(peer, m.Refused(f"protocol {msg.protocol} unsupported; "
                                       f"this worker speaks {m.PROTOCOL_VERSION}"))
            return
        self.mains[peer] = MainPeer(peer, msg.main_id, msg.name, msg.forward_output,
                                    time.monotonic())
        log.info("serving Main %s (pid %d)", msg.name, msg.pid)
        self._send(peer, m.Welcome(m.PROTOCOL_VERSION, self.worker_id, self.name,
                                   _facts.platform_tag(), _facts.python_version(), self.slots,
                                   os.getpid()))

    def _on_submit(self, peer: bytes, msg: m.Submit) -> None:
        frames = list(msg.frames)
        at = 0
        for spec in msg.tasks:
            task = QueuedTask(peer, spec.task_id, spec.dist, spec.threads, spec.timeout,
                              [*spec.inline, *frames[at: at + spec.nframes]])
            at += spec.nframes
            if spec.threads > self.slots:
                self._result(task, "error", {
                    "type": "distrib.ConfigError",
                    "message": f"task needs {spec.threads} threads; worker {self.name} offers "
                               f"{self.slots}", "traceback": ""}, [])
                continue
            dist = self.dists.get(spec.dist)
            if dist is None:
                self.dists[spec.dist] = Dist("manifest", source=peer)
                self._send(peer, m.NeedManifest(spec.dist))
            elif dist.state == "failed" and dist.error is not None:
                self._result(task, "env_error", dist.error[0], dist.error[1])
                continue
            self.queues.add(task)

    def _on_manifest(self, msg: m.Manifest) -> None:
        dist = self.dists.get(msg.dist)
        if dist is None or dist.state != "manifest":
            return
        try:
            dist.main, dist.entries = decode_manifest(bytes(msg.frames[0].buffer if hasattr(
                msg.frames[0], "buffer") else msg.frames[0]), msg.dist)
        except WorkspaceError as exc:
            self._fail_dist(msg.dist, _plain_error(exc), [])
            return
        missing = self.store.missing(dist.entries)
        if missing:
            dist.state, dist.waiting_blobs = "blobs", set(missing)
            peer = self._peer_of_dist(msg.dist)
            if peer is not None:
                self._send(peer, m.NeedBlobs(msg.dist, missing))
        else:
            self._materialize(msg.dist, dist)

    def _on_blobs(self, msg: m.Blobs) -> None:
        dist = self.dists.get(msg.dist)
        if dist is None or dist.state != "blobs":
            return
        for digest, frame in zip(msg.hashes, msg.frames):
            if digest not in dist.waiting_blobs:
                log.warning("dropped unrequested blob %s", digest[:12])
                continue
            try:
                self.store.put_compressed(digest, frame.buffer if hasattr(frame, "buffer") else frame)
            except WorkspaceError as exc:
                self._fail_dist(msg.dist, _plain_error(exc), [])
                return
            dist.waiting_blobs.discard(digest)
            self.counters["blobs_received"] += 1
        if not dist.waiting_blobs:
            self._materialize(msg.dist, dist)

    def _materialize(self, dist_id: str, dist: Dist) -> None:
        in_use = {d for d, x in self.dists.items() if x.state == "ready"}
        try:
            dist.env = self.store.materialize(dist_id, dist.entries, in_use)
        except (WorkspaceError, OSError) as exc:
            self._fail_dist(dist_id, _plain_error(exc), [])
            return
        dist.state = "ready"
        log.info("environment %s ready (%d files)", dist_id[:12], len(dist.entries))

    def _peer_of_dist(self, dist_id: str) -> bytes | None:
        dist = self.dists.get(dist_id)
        return dist.source if dist is not None else None

    def _fail_dist(self, dist_id: str, info: dict[str, str], frames: list[Any]) -> None:
        log.warning("environment %s failed: %s", dist_id[:12], info.get("message"))
        dist = self.dists.setdefault(dist_id, Dist("failed"))
        dist.state, dist.error = "failed", (info, frames)
        for task in self.queues.take_where(lambda t: t.dist == dist_id):
            self._result(task, "env_error", info, frames)

    def _cancel(self, peer: bytes, task_id: int) -> None:
        task = self.queues.remove(peer, task_id)
        if task is not None:
            self._result(task, "cancelled", {}, [])
            return
        for ex in self.executors:
            for i, run in enumerate(ex.tasks):
                if run.task.peer == peer and run.task.task_id == task_id:
                    self._withdraw(ex, run, i == 0, "cancelled")
                    return

    def _withdraw(self, ex: Executor, run: Running, running: bool, why: str) -> None:
        """Cancel (or drop) a task handed to ``ex``: stop it if it runs, else ask to skip it."""
        if running:
            self._halt(ex, lambda r, head: why if r is run else None)
            return
        run.withdrawn = why
        try:
            ex.pipe.send(["skip", run.key])
        except OSError:
            self._executor_died(ex)

    def _drop_main(self, peer: bytes, why: str) -> None:
        main = self.mains.pop(peer, None)
        dropped = self.queues.drop_peer(peer)
        stopped = 0
        for ex in list(self.executors):
            for i, run in reversed(list(enumerate(ex.tasks))):
                if run.task.peer == peer and ex in self.executors:
                    self._withdraw(ex, run, i == 0, "drop")
                    stopped += i == 0
        self._outbox.pop(peer, None)
        for dist_id, dist in list(self.dists.items()):
            if dist.source == peer and dist.state in ("manifest", "blobs"):
                # Fetch it again from another Main that has tasks for it, if any.
                del self.dists[dist_id]
                other = self.queues.first_peer_with(dist_id)
                if other is not None:
                    self.dists[dist_id] = Dist("manifest", source=other)
                    self._send(other, m.NeedManifest(dist_id))
        log.info("Main %s %s: dropped %d queued and stopped %d running tasks",
                 main.name if main else peer.hex()[:8], why, len(dropped), stopped)

    # --- executors ---------------------------------------------------------------------------

    def _schedule(self) -> None:
        while self.busy < self.slots:
            task = self.queues.next_runnable(self.slots - self.busy, self._runnable)
            if task is None:
                break
            dist = self.dists[task.dist]
            assert dist.env is not None
            key = EnvKey(task.dist, task.threads)
            ex = next((e for e in self.executors if e.key == key and not e.tasks), None)
            if ex is None:
                ex = self._spawn(key, dist)
            self.busy += task.threads
            self._hand(ex, task)
        if self.busy >= self.slots and len(self.queues):
            self._prefetch()
        self._send_runs()

    def _prefetch(self) -> None:
        """All slots busy: give each busy executor its next task (tiny tasks: a few), so it
        starts it the moment it finishes one instead of waiting for a turn of this loop."""
        for ex in self.executors:
            if not ex.tasks or not ex.ready:
                continue
            key = ex.key
            depth = PREFETCH if self._run_time.get(key, 1.0) <= TINY_TASK else 1
            while len(ex.tasks) <= depth:
                task = self.queues.next_runnable(key.threads, lambda t: (
                    t.dist == key.dist and t.threads == key.threads
                    and t.nbytes < PREFETCH_BYTES))
                if task is None:
                    break
                self._hand(ex, task)

    def _hand(self, ex: Executor, task: QueuedTask) -> None:
        self._next_key += 1
        run = Running(task, self._next_key)
        ex.tasks.append(run)
        if len(ex.tasks) == 1:
            self._began(run, time.monotonic())
        if ex.ready:
            self._unsent.setdefault(ex, []).append(run)

    def _next_head(self, ex: Executor, now: float) -> None:
        """The executor's head task is gone: the next one (if any) starts running now."""
        if not ex.tasks:
            self.busy -= ex.key.threads
            return
        head = ex.tasks[0]
        self._began(head, now)
        if head.withdrawn is not None:
            # Its skip may be on its way back; if not, it started: stop it shortly.
            head.stop_at = now + SKIP_GRACE

    def _began(self, run: Running, now: float) -> None:
        run.started = now
        run.deadline = None if run.task.timeout is None else now + run.task.timeout

    def _send_runs(self) -> None:
        """Send what _hand gave each executor in this turn, one write per executor."""
        unsent, self._unsent = self._unsent, {}
        for ex, runs in unsent.items():
            live = [r for r in runs if r in ex.tasks]
            if not live or ex not in self.executors:
                continue
            try:
                ex.run([(r.key, r.task.frames) for r in live])
            except OSError as exc:
                log.debug("executor %d: %s", ex.pid, exc, exc_info=True)
                self._executor_died(ex)

    def _runnable(self, task: QueuedTask) -> bool:
        dist = self.dists.get(task.dist)
        return dist is not None and dist.state == "ready"

    def _spawn(self, key: EnvKey, dist: Dist) -> Executor:
        idle = [e for e in self.executors if not e.tasks]
        # Keep at most ``slots`` executors around: retire an idle one of another environment.
        if len(self.executors) >= self.slots and idle:
            self._retire(idle[0])
        assert dist.env is not None
        ex = _pool.spawn(key, dist.env, dist.main, self.runs)
        self.executors.append(ex)
        self.counters["executors_started"] += 1
        return ex

    def _retire(self, ex: Executor) -> None:
        ex.kill()
        self.executors.remove(ex)

    def _on_executor(self, ex: Executor) -> None:
        try:
            header, frames = ex.read()
        except (EOFError, OSError, ValueError) as exc:
            log.debug("executor %d: %s", ex.pid, exc, exc_info=True)
            self._executor_died(ex)
            return
        kind = header[0] if header else None
        head = ex.task
        if kind == "ready":
            ex.ready = True
            self._unsent.setdefault(ex, []).extend(ex.tasks)
        elif kind == "out" and head is not None and len(header) == 4:
            main = self.mains.get(head.task.peer)
            if main is not None and main.forward_output:
                self._send(main.peer, m.Output(head.task.task_id, int(header[2]), str(header[3])))
        elif kind == "done" and head is not None and len(header) == 4 and header[1] == head.key:
            now = time.monotonic()
            ex.tasks.popleft()
            seconds = now - head.started
            self._run_time[ex.key] = 0.8 * self._run_time.get(ex.key, seconds) + 0.2 * seconds
            self._next_head(ex, now)
            self.counters["tasks_done"] += 1
            if head.withdrawn is None:
                self._result(head.task, str(header[2]), dict(header[3]), frames)
            elif head.withdrawn == "cancelled":  # finished before the skip could stop it
                self._result(head.task, "cancelled", {}, [])
        elif kind == "skipped" and len(header) == 2:
            run = next((r for r in ex.tasks if r.key == header[1]), None)
            if run is not None:
                was_head = run is ex.task
                ex.tasks.remove(run)
                if run.withdrawn == "cancelled":
                    self._result(run.task, "cancelled", {}, [])
                if was_head:
                    self._next_head(ex, time.monotonic())
        elif kind == "env_error" and len(header) == 2:
            self._fail_dist(ex.key.dist, dict(header[1]), frames)
            self._halt(ex, lambda run, h: "env_error", dict(header[1]), frames)
        else:
            log.warning("executor %d sent an unexpected %r; stopping it", ex.pid, kind)
            self._executor_died(ex)

    def _executor_died(self, ex: Executor) -> None:
        if ex not in self.executors:
            return
        code = ex.proc.poll()
        head = ex.task
        if head is not None:
            self.counters["executors_crashed"] += 1
            log.warning("executor %d died (exit %s) running task %d; replacing it",
                        ex.pid, code, head.task.task_id)
        info = {"type": "distrib.WorkerCrashed",
                "message": f"executor process {ex.pid} on worker {self.name} died "
                           f"(exit code {code})", "traceback": ""}
        self._halt(ex, lambda run, is_head: "crashed" if is_head else None, info)

    def _halt(self, ex: Executor, outcome: Callable[[Running, bool], str | None],
              info: dict[str, str] | None = None, frames: list[Any] | None = None) -> None:
        """Kill ``ex``. Each of its tasks is reported with ``outcome(run, is_head)`` (and
        ``info``/``frames``, for a crash or an environment error), or put back at the head of
        its queue when that is None ("drop": forgotten, its Main left)."""
        runs = list(ex.tasks)
        ex.tasks.clear()
        self._retire(ex)
        if runs:
            self.busy -= ex.key.threads
        for i, run in reversed(list(enumerate(runs))):
            status = outcome(run, i == 0)
            if status is None and run.withdrawn is not None:
                status = run.withdrawn  # asked to skip it: it does not go back to the queue
            if status is None:
                self.queues.add_front(run.task)
            elif status in ("crashed", "env_error"):
                self._result(run.task, status, info or {}, frames or [])
            elif status != "drop":
                self._result(run.task, status, {}, [])

    # --- results and timers ------------------------------------------------------------------

    def _result(self, task: QueuedTask, status: str, info: dict[str, str], frames: list[Any]) -> None:
        if task.peer in self.mains:
            inline, separate = m.split_payload(frames)
            self._outbox[task.peer].append(
                (m.ResultSpec(task.task_id, status, info, inline, len(separate)), separate))

    def _flush_results(self) -> None:
        for peer, items in self._outbox.items():
            self._send(peer, m.Results([spec for spec, _ in items],
                                       frames=tuple(f for _, fs in items for f in fs)))
        self._outbox.clear()

    def _tick(self, now: float) -> None:
        for ex in list(self.executors):
            head = ex.task
            if head is not None and head.stop_at is not None and now > head.stop_at:
                why = head.withdrawn
                self._halt(ex, lambda run, is_head: why if is_head else None)
            elif head is not None and head.deadline is not None and now > head.deadline:
                log.info("task %d ran past its timeout; stopping it", head.task.task_id)
                self._halt(ex, lambda run, is_head: "timeout" if is_head else None)
            elif ex.proc.poll() is not None:
                self._executor_died(ex)
        for peer, main in list(self.mains.items()):
            if now - main.last_seen > self.lost_after:
                self._drop_main(peer, f"was silent for {self.lost_after:.0f} s")
            else:
                self._send(peer, m.Heartbeat(self.busy, self._waiting(peer)))
        self._reload_authorized()
        if self.exit_with_parent is not None and os.getppid() != self.exit_with_parent:
            log.info("parent process %d is gone; stopping", self.exit_with_parent)
            self._stop = True

    def _waiting(self, peer: bytes | None = None) -> int:
        """Tasks not running yet: queued here, or handed to a busy executor to run next."""
        handed = sum(1 for ex in self.executors for run in list(ex.tasks)[1:]
                     if peer is None or run.task.peer == peer)
        return (len(self.queues) if peer is None else self.queues.count(peer)) + handed

    def status(self) -> dict[str, Any]:
        """Facts, load and counters, as ``distrib status`` and tests read them."""
        return {
            "name": self.name,
            "worker_id": self.worker_id,
            "address": self.address,
            "platform": _facts.platform_tag(),
            "python": _facts.python_version(),
            "pid": os.getpid(),
            "slots": self.slots,
            "busy": self.busy,
            "queued": self._waiting(),
            "mains": [x.name for x in self.mains.values()],
            "executors": [e.pid for e in self.executors],
            "public_key": self.key.public if self.key else None,
            **self.counters,
        }


def _plain_error(exc: BaseException) -> dict[str, str]:
    return {"type": f"distrib.{type(exc).__name__}", "message": str(exc), "traceback": ""}

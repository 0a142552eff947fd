"""The Main's session: set-up, the I/O thread, and tear-down.

    user thread: f(x) -> pickle the call -> Task -> incoming deque -> wake -> Response
    I/O thread:  incoming -> Scheduler.assign -> Submit batches -> workers
                 workers -> Results -> Response._set_outcome (callbacks, waiters)
                 workers -> NeedManifest / NeedBlobs -> workspace files, compressed
                 every tick: heartbeats, lost workers, reconnects, warnings

Only the I/O thread touches sockets and the scheduler; user threads only append to deques.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import socket
import sys
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import zmq

from distrib import _config, _runtime, _shared, _shm
from distrib._errors import (
    AuthError,
    Cancelled,
    DependencyError,
    DistribError,
    SerializationError,
    WorkerLost,
)
from distrib._response import Response
from distrib.main import _discovery
from distrib.main._shipping import (
    blob_messages,
    forwarded_environ,
    preload_modules,
    scan_workspace,
)
from distrib.main._link import Link, LinkState
from distrib.main._nested import Nested
from distrib.main._outcomes import Outputs, settle
from distrib.main._scheduler import Scheduler, Task, WorkerView
from distrib.main._stats import Stats, snapshot
from distrib.wire import _codec, _facts, _transport
from distrib.wire import _messages as m
from distrib.wire._limits import MAX_MESSAGE_BYTES, batches
from distrib.wire._messages import RefusalCode
from distrib.workspace._manifest import Distribution

log = logging.getLogger("distrib")

RECONNECT_AFTER = 2.0
SHIP_NOTICE_BYTES = 16 << 20  # a shipment this large says so, and how long it took
SCAN_NOTICE_SECONDS = 1.0  # a scan of the workspace this slow says so
PUBLISH_EVERY = 0.5  # seconds between the dashboard's snapshots
AUTH_RETRY_AFTER = 10.0  # a refused key may be authorized later (workers reread their list)
WARM_WAIT = 60.0  # the most init() waits for the local worker's executors


def _setup_logging() -> None:
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("distrib: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)


class Session:
    """Everything a Main holds while it uses workers."""

    def __init__(self, settings: _config.Settings, main_file: Path | None) -> None:
        _setup_logging()
        self.settings = settings
        self.python = _facts.python_version()
        start = time.monotonic()
        self.local = None
        workers = list(settings.workers)
        if not workers and not settings.discovery.enabled:
            from distrib._local import LocalCluster

            # Started first: the daemon's own start overlaps the scan below.
            self.local = LocalCluster(settings.local_threads, settings.cache_dir)
            workers = [_config.WorkerAddress(a) for a in self.local.addresses]
        try:
            self.dist: Distribution = scan_workspace(settings, main_file)
            if time.monotonic() - start > SCAN_NOTICE_SECONDS:
                log.warning("scanned the workspace %s: %d files, %.0f MB in %.1f s",
                            self.dist.root, len(self.dist.entries),
                            sum(e.size for e in self.dist.entries) / 1e6,
                            time.monotonic() - start)
            # Describing the environment reads package metadata: done while the daemon starts.
            described = _Described(settings, self.dist)
            if self.local is not None:
                self.local.wait_ready()
            self.env, self.wheels = described.result()
        except BaseException:
            if self.local is not None:
                self.local.stop()
            raise
        _runtime.main_shipped = self.dist.main is not None
        _runtime.shipped_root = str(self.dist.root) if self.dist.entries else None
        self.name = f"{main_file.name if main_file else 'python'}@{socket.gethostname()}:{os.getpid()}"
        self.main_id = os.urandom(8).hex()
        self.ctx: zmq.Context[Any] = zmq.Context()
        forwarded = forwarded_environ(self.dist, settings.forward_env, os.environ)
        self._probe = None
        if settings.shared_memory:
            _shm.remove_stale()
            self._probe = _shm.probe(os.getpid())
        self._shm_links = False  # a worker shares /dev/shm: calls write large frames there
        if forwarded:
            log.info("forwarding to workers: %s", ", ".join(forwarded))
        log.info("environment for workers: Python %s, %s", self.env.python, self.env.summary())
        self.hello = m.Hello(m.PROTOCOL_VERSION, self.main_id, self.name, self.python,
                             os.getpid(), settings.forward_output, list(sys.argv), forwarded,
                             self.env.encode(), MAX_MESSAGE_BYTES,
                             preload_modules(self.dist.root if self.dist.entries else None),
                             settings.max_payload or 0,
                             [self._probe[0].name, self._probe[1]] if self._probe else [],
                             self.dist.dist_id, 1, settings.redistribution)
        self.links: dict[str, Link] = {}
        self.received: Counter[str] = Counter()  # messages from workers, by kind
        self._peers_told: dict[str, list[list[Any]]] = {}  # per link: the Peers it last heard
        for worker in workers:
            self._add_link(worker)
        self._found: deque[Any] = deque()
        self._browser: Any = None
        if settings.discovery.enabled:
            from distrib.wire._mdns import Browser

            self._browser = Browser(self._on_found, settings.discovery.interfaces)
        self.scheduler = Scheduler(self.python)
        self.nested = Nested(self.scheduler, self._next_id, self._send_to, self._request_cancel)
        self.outputs = Outputs(self.dist.root)
        self._ids = itertools.count(1)
        self._incoming: deque[Task] = deque()
        self._cancels: deque[int] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._awake = False
        self._closing = False
        self._closing_lock = threading.Lock()  # no call slips in while close() drains
        self._warned: set[Any] = set()
        self._started = time.monotonic()
        # With a dashboard: counts kept by the I/O thread, and the snapshot it publishes.
        self.stats = Stats(sum(e.size for e in self.dist.entries)) if settings.dashboard \
            else None
        self.snapshot: dict[str, Any] | None = None
        self._published = 0.0
        self._warmed = threading.Event()  # the local worker's executors are ready (or never)
        self._thread = threading.Thread(target=self._run, name="distrib-io", daemon=True)
        self._thread.start()
        self.dashboard = None
        if settings.dashboard:
            from distrib.dashboard import Dashboard

            try:
                self.dashboard = Dashboard(self, settings.dashboard)
            except BaseException:  # (a port it may not use: nothing is left running)
                self.close()
                raise
        if self.local is not None:
            self._await_warm(start)

    def _await_warm(self, start: float) -> None:
        """The local worker starts an executor per slot as it hears our Hello: wait until
        they have imported the workspace, so that the first calls start at once, as a process
        pool's do (calls made after ``WARM_WAIT`` seconds wait for them instead)."""
        try:
            if not self._warmed.wait(WARM_WAIT):
                log.warning("the local worker's executors are not ready after %.0f s; calls "
                            "wait for them", WARM_WAIT)
        except BaseException:  # (Ctrl-C here: nothing is left running)
            self.close()
            raise
        log.debug("the local worker's executors were ready %.2f s after the start",
                  time.monotonic() - start)

    def _add_link(self, worker: _config.WorkerAddress) -> Link:
        link_id = f"w{len(self.links)}"
        hello = self.hello
        if self.local is not None:  # (ours alone: all its slots get an executor ahead)
            hello = dataclasses.replace(hello, warm=self.settings.local_threads)
        link = Link(link_id, worker.address, _config.endpoint(worker.address), self.ctx,
                    hello, worker.public_key, self.settings.key)
        self.links[link_id] = link
        return link

    # --- user threads ------------------------------------------------------------------------

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Response[Any]:
        """Pickle the call and hand it to the I/O thread; return its Response at once.

        A call during or after ``close()`` ends at once as ``Cancelled``."""
        frames, shared = _shared.dumps_call((fn, args, kwargs))
        cap = self.settings.max_payload
        if cap is not None and (size := m.payload_size(frames)) > cap:
            raise SerializationError(
                f"the arguments of {fn.__qualname__} pickle to {size:,} bytes, more than "
                f"max_payload ({cap:,} bytes, {self.settings.source}); pass less, or raise "
                "the setting")
        opts = fn.options
        task_id = next(self._ids)
        response: Response[Any] = Response(task_id, fn.__qualname__, self._request_cancel)
        task = Task(task_id, fn.__qualname__, frames, opts.platform, opts.threads, opts.retries,
                    opts.timeout, response, opts.outputs, shared=shared)
        if self._probe is not None and (self.local is not None or self._shm_links):
            if _shm.worth(frames):
                self._in_shm(task)  # here, not in the I/O thread: it copies the large frames
            for obj in (shared or {}).values():
                if obj.nbytes >= _shm.MIN:
                    self._share_in_shm(obj)
        with self._closing_lock:
            if not self._closing:
                self._incoming.append(task)
                self._wake()
                return response
        response._set_outcome(None, exc=Cancelled(
            f"task {fn.__qualname__}#{task_id}: distrib was shut down; call distrib.init() "
            "to set up again"))
        return response

    def _on_found(self, found: Any) -> None:  # zeroconf's thread
        self._found.append(found)
        self._wake()

    def _next_id(self) -> int:
        return next(self._ids)

    def _send_to(self, link_id: str, msg: m.Message) -> None:
        link = self.links.get(link_id)
        if link is not None and link.state is LinkState.READY:
            link.send(msg)

    def _request_cancel(self, task_id: int) -> None:
        self._cancels.append(task_id)
        self._wake()

    def _wake(self) -> None:
        if not self._awake:  # one wake-up byte in flight is enough
            self._awake = True
            try:
                self._wake_w.send(b"x")
            except (BlockingIOError, OSError):
                pass

    def close(self) -> None:
        """Stop the I/O thread (saying goodbye to workers) and the local cluster."""
        with self._closing_lock:
            if self._closing:
                return
            self._closing = True
        self._awake = False
        self._wake()
        self._thread.join(30)
        if self.dashboard is not None:
            self.dashboard.stop()
        if self._browser is not None:
            self._browser.close()
        for task in list(self._incoming) + self.scheduler.all_tasks():
            task.response._set_outcome(None, exc=Cancelled(
                f"task {task.name}#{task.task_id} did not finish before distrib shut down"))
        if self.local is not None:
            self.local.stop()
        if self._probe is not None:
            _shm.remove_of(os.getpid())

    # --- the I/O thread ----------------------------------------------------------------------

    def _run(self) -> None:
        now = time.monotonic()
        for link in self.links.values():
            link.connect(now)
        next_tick = last_tick = now
        try:
            while not self._closing:
                poller = zmq.Poller()
                poller.register(self._wake_r, zmq.POLLIN)
                socks = {link.sock: link for link in self.links.values() if link.sock is not None}
                monitors = {link.monitor: link for link in self.links.values()
                            if link.monitor is not None}
                for sock in [*socks, *monitors]:
                    poller.register(sock, zmq.POLLIN)
                events = dict(poller.poll(int(max(0.0, next_tick - time.monotonic()) * 1000) + 1))
                if self._wake_r.fileno() in events:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                    # Only now: a wake-up sent after this line is a byte we have not drained,
                    # and a task queued before it is seen by _take_incoming below.
                    self._awake = False
                for mon, link in monitors.items():
                    if mon in events and link.monitor is mon:
                        self._on_monitor(link, _transport.monitor_event(mon))
                for sock, link in socks.items():
                    if sock in events and link.sock is sock:
                        self._drain(link)
                self._take_incoming()
                self._adopt_found()
                self._dispatch()
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(now)
                    self.scheduler.observe(now - last_tick)
                    last_tick = now
                    next_tick = now + min(self.settings.heartbeat_interval, 0.2)
        except Exception:  # a bug here would hang every unwrap(): say so loudly
            log.exception("the distrib I/O thread failed; pending tasks cannot finish")
            raise
        finally:
            self._warmed.set()
            for link in self.links.values():
                link.send(m.Goodbye())
                link.close()
            self.ctx.term()

    def _adopt_found(self) -> None:
        """Connect to discovered workers this Main trusts (``_discovery``)."""
        while self._found:
            found = self._found.popleft()
            if any(link.address == found.address for link in self.links.values()):
                continue
            verdict = _discovery.verdict(found, self.settings)
            if verdict:
                if ("found", found.address) not in self._warned:
                    self._warned.add(("found", found.address))
                    log.warning("discovered worker %s at %s: %s", found.name, found.address,
                                verdict)
                continue
            log.info("discovered worker %s at %s; connecting", found.name, found.address)
            self._add_link(_config.WorkerAddress(found.address, found.public_key)).connect(
                time.monotonic())

    def _take_incoming(self) -> None:
        stats = self.stats
        while self._incoming:
            task = self._incoming.popleft()
            self.scheduler.add(task)
            if stats is not None:
                stats.submitted(task.name)
        while self._cancels:
            task_id = self._cancels.popleft()
            withdrawn, link_id = self.scheduler.withdraw(task_id)
            if withdrawn is not None:
                self._count(withdrawn)
            if link_id is not None:
                self.links[link_id].send(m.Cancel([task_id]))

    def _dispatch(self) -> None:
        for link_id, tasks in self.scheduler.assign().items():
            link = self.links[link_id]
            specs: list[tuple[m.TaskSpec, list[Any]]] = []
            for t in tasks:
                frames, shm = (self._in_shm(t) if link.shm and _shm.worth(t.frames)
                               else (t.frames, _NONE))
                inline, separate = m.split_payload(frames)
                objects = {k: s.nbytes for k, s in t.shared.items()} if t.shared else _NONE
                specs.append((m.TaskSpec(t.task_id, self.dist.dist_id, t.threads, t.timeout,
                                         t.attempts, inline, len(separate), objects, shm,
                                         t.depth),
                               separate))
            for batch in batches(specs, _inline_bytes):
                link.send(m.Submit([spec for spec, _ in batch],
                                   frames=tuple(f for _, fs in batch for f in fs)))

    def _in_shm(self, task: Task) -> tuple[list[Any], dict[str, int]]:
        """``task``'s payload (one with a large frame: ``_shm.worth``) with its large frames in
        /dev/shm (written once; the files are removed with the task)."""
        if task.in_shm is None:
            frames, names = task.frames, _NONE
            try:
                frames, names = _shm.offload(task.frames, os.getpid())
            except OSError as exc:  # /dev/shm full, say: the frames go by the socket
                log.warning("cannot put a call's arguments in shared memory (%s); sending "
                            "them by the socket", exc)
            task.in_shm = (frames, names, _shm.Owned(list(names)) if names else None)
        return task.in_shm[0], task.in_shm[1]

    def _share_in_shm(self, obj: _shared.Shared[Any]) -> str | None:
        """Write shared object ``obj`` into /dev/shm once, for workers that share it to link
        (done as a call passes it, in the caller's thread where it can be: it copies it);
        its file's name, or None with /dev/shm full (it goes by the socket then)."""
        try:
            return obj.in_shm(os.getpid())
        except OSError as exc:
            log.warning("cannot put a shared object in shared memory (%s); sending it by the "
                        "socket", exc)
            return None

    def _drain(self, link: Link) -> None:
        assert link.sock is not None
        for _ in range(1000):
            try:
                frames = _transport.recv_frames(link.sock)
            except zmq.Again:
                return
            try:
                message = _codec.decode(frames)
            except DistribError as exc:
                log.warning("dropped a malformed message from worker %s: %s", link.label, exc)
                continue
            link.last_seen = time.monotonic()
            self._on_message(link, message)
            if link.sock is None:
                return

    def _on_message(self, link: Link, msg: m.Message) -> None:
        self.received[type(msg).__name__] += 1
        if isinstance(msg, m.Results):
            self._on_results(link, msg)
        elif isinstance(msg, m.Output):
            self._print(link, msg)
        elif isinstance(msg, m.Welcome):
            self._on_welcome(link, msg)
        elif isinstance(msg, m.Refused):
            self._on_refused(link, msg)
        elif isinstance(msg, m.NeedManifest):
            if msg.dist == self.dist.dist_id:
                link.send(m.Manifest(msg.dist, frames=(self.dist.encoded,)))
            else:
                link.send(m.DistFailed(msg.dist, "this Main does not have that distribution"))
        elif isinstance(msg, m.NeedBlobs):
            self._ship(link, msg)
        elif isinstance(msg, m.NeedObjects):
            self._send_objects(link, msg.keys)
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
            self._on_state(link, msg)
        elif isinstance(msg, m.Warmed):
            if msg.why:
                log.info("worker %s started no executor ahead: %s", link.label, msg.why)
            self._warmed.set()
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
        if size >= SHIP_NOTICE_BYTES:
            log.warning("worker %s: shipping %s: %d files, %.0f MB", link.label, what,
                        len(need.hashes), size / 1e6)
        start = time.monotonic()
        for reply in blob_messages(self.dist, need, self.env.env_id, self.wheels):
            link.send(reply)
        if size >= SHIP_NOTICE_BYTES:
            log.warning("worker %s: %s sent (%.0f MB in %.1f s)", link.label, what, size / 1e6,
                        time.monotonic() - start)

    def _send_objects(self, link: Link, keys: list[str]) -> None:
        """Send the shared objects a worker asks for, one message each (they are large)."""
        gone = []
        for key in keys:
            obj = _shared.find(key)
            if obj is None:
                gone.append(key)
            elif link.shm and (file := obj.file() or self._share_in_shm(obj)) is not None:
                link.send(m.Objects([key], [0], [file]))  # (the worker links that file)
            else:
                link.send(m.Objects([key], [len(obj.frames)], frames=tuple(obj.frames)))
        if gone:
            link.send(m.ObjectsFailed(gone, "no pending call of this Main passes them"))

    def _on_welcome(self, link: Link, msg: m.Welcome) -> None:
        if link.state is LinkState.READY:
            return
        link.state, link.name, link.since = LinkState.READY, msg.name, time.monotonic()
        link.max_frame = max(1, msg.max_frame)
        link.worker_state = "serving"
        link.shm = msg.shm and self._probe is not None
        self._shm_links = self._shm_links or link.shm
        if msg.environment:
            log.warning("worker %s gets no tasks: %s", link.label, msg.environment)
        self.scheduler.join(WorkerView(link.link_id, msg.name, msg.platform, msg.python,
                                       msg.slots, pythons=tuple(msg.pythons),
                                       unable=msg.environment,
                                       memory_limit=msg.memory_limit))
        self._tell_peers()

    def _tell_peers(self, gone: Link | None = None) -> None:
        """Each worker hears of the others (``Peers``): its tasks' calls may go to them
        directly, and those with keys may send it calls on this Main's behalf (``gone``: a
        worker that left, told anew if it comes back)."""
        if gone is not None:
            self._peers_told.pop(gone.link_id, None)
        ready = [x for x in self.links.values() if x.state is LinkState.READY]
        for link in ready:
            workers = [[x.address, x.server_key or "", x.name,
                        view.slots if (view := self.scheduler.workers.get(x.link_id)) else 0]
                       for x in ready if x is not link]
            if self._peers_told.get(link.link_id) != workers:
                self._peers_told[link.link_id] = workers
                link.send(m.Peers(workers))

    def _on_state(self, link: Link, msg: m.WorkerState) -> None:
        """What the worker lends now: its state (the owner's word, hours, load), the slots
        this Main may use there and its memory limit for a task."""
        view = self.scheduler.workers.get(link.link_id)
        if view is not None and msg.slots > 0 and msg.slots != view.slots:
            log.info("worker %s now offers this Main %d slot(s)", link.label, msg.slots)
            view.slots = msg.slots
        if view is not None:
            view.memory_limit = max(0, msg.memory_limit)
        state, why = msg.state, msg.why
        if state not in ("serving", "paused", "draining") or state == link.worker_state:
            return
        link.worker_state = state
        if view is not None:
            view.paused = state != "serving"
        if why and state == "paused":
            log.warning("worker %s stops lending, %s: its queued tasks go elsewhere",
                        link.label, why)
            return
        log.warning("worker %s %s", link.label, {
            "serving": "takes tasks again",
            "paused": "was paused by its owner: its queued tasks go elsewhere",
            "draining": "is draining (its owner's word): its queued tasks go elsewhere, and it "
                        "leaves when its running tasks are done"}[state])

    def _drained(self, link: Link) -> bool:
        """A draining worker left: a clean leave (its tasks go elsewhere, no try counted)."""
        if link.worker_state != "draining" or link.state is not LinkState.READY:
            return False
        log.warning("worker %s left: drained by its owner", link.label)
        view = self.scheduler.workers.get(link.link_id)
        inflight = list(view.inflight.values()) if view is not None else []
        self.scheduler.leave(link.link_id, clean=True)
        self.nested.worker_left(link.link_id, inflight)
        link.close()
        link.state, link.since, link.reason = LinkState.LOST, time.monotonic(), "drained"
        link.worker_state = "serving"  # (a worker started again at its address is new)
        self._tell_peers(gone=link)
        return True

    def _on_refused(self, link: Link, msg: m.Refused) -> None:
        if msg.code is RefusalCode.SHUTTING_DOWN and self._drained(link):
            return
        was_ready = link.state is LinkState.READY
        self._lose(link, LinkState.REFUSED, msg.reason)
        if msg.code in (RefusalCode.UNKNOWN_PEER, RefusalCode.MALFORMED):
            link.connect(time.monotonic())  # the worker forgot this Main: say Hello again
        elif not was_ready:
            log.warning("worker %s refused this Main: %s", link.label, msg.reason)

    def _on_monitor(self, link: Link, event: Any) -> None:
        if event["event"] == zmq.EVENT_DISCONNECTED:
            # A worker killed with -9, or a network that reset the connection: its tasks go
            # elsewhere now instead of after lost_after seconds of silence.
            if self._drained(link):
                return
            if link.state is LinkState.READY:
                log.warning("worker %s closed the connection: declared lost; its tasks go "
                            "elsewhere", link.label)
                self._lose(link, LinkState.LOST, "closed the connection")
            return
        if link.state is LinkState.AUTH_FAILED:
            return
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            mine = self.settings.key.public if self.settings.key else "(none)"
            reason = (f"worker {link.label} refused this Main's key {mine}: add this Main's "
                      "public key (its .pub file) to the worker's authorized keys")
        elif link.server_key is None:
            reason = (f"worker {link.label} uses keys, and no public_key is configured for it: "
                      "add the worker's public key (its .pub file) to its [[workers]] entry")
        else:
            reason = (f"worker {link.label} did not prove the public key configured for it "
                      f"({link.server_key}): check its public_key, or whether something else "
                      "answers at that address")
        log.warning("%s", reason)
        self._lose(link, LinkState.AUTH_FAILED, reason)

    def _lose(self, link: Link, state: LinkState, reason: str) -> None:
        view = self.scheduler.workers.get(link.link_id)
        inflight = list(view.inflight.values()) if view is not None else []
        failed = self.scheduler.leave(link.link_id)
        for task in failed:
            task.response._set_outcome(link.name, exc=WorkerLost(
                f"task {task.name}#{task.task_id} was on worker {link.label}, which {reason}; "
                f"tried {task.attempts} times"))
        for task in inflight:
            self._count(task, link.name, retried=True)
        self.nested.worker_left(link.link_id, inflight)
        link.close()
        link.state, link.since, link.reason = state, time.monotonic(), reason
        link.building = link.has_workspace = False  # (a worker started again says anew)
        self._tell_peers(gone=link)
        self._warmed.set()  # (no executors ahead: its Welcome or calls say why)

    def _on_results(self, link: Link, msg: m.Results) -> None:
        at = 0
        for spec in msg.results:
            frames = [*spec.inline, *msg.frames[at: at + spec.nframes]]
            at += spec.nframes
            task = self.scheduler.finish(link.link_id, spec.task_id)
            if spec.shm:
                try:
                    frames = _shm.restore(frames, spec.shm, unlink=True)
                except (OSError, ValueError) as exc:
                    _shm.remove(list(spec.shm))
                    if task is not None:
                        task.response._set_outcome(link.name, exc=SerializationError(
                            f"the result of {task.name}#{task.task_id} on worker {link.label} "
                            f"was lost: its shared memory cannot be read ({exc})"))
                        self._count(task, link.name, link.link_id)
                    continue
            if task is None:
                continue
            if task.task_id in self.nested.parents:
                self.nested.parents_moved([task])  # (its run here ended: its calls too)
                self.nested.finished(link.link_id, task.task_id)
            settle(task, spec, frames, link.name, f"{task.name}#{task.task_id} on worker "
                   f"{link.label}", self.scheduler, self.outputs, link.link_id)
            if self.stats is not None:
                link.has_workspace, link.building = True, False
                if "ran" in spec.info:
                    self.stats.ran(task.name, spec.info["ran"])
                self._count(task, link.name, link.link_id,
                            retried=spec.status is m.Outcome.CRASHED)

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

    def _tick(self, now: float) -> None:
        s = self.settings
        self.nested.check_deadlock(now)
        for link in self.links.values():
            if link.state is LinkState.READY:
                if now - link.last_seen > s.lost_after:
                    log.warning("worker %s is silent for %.0f s: declared lost; its tasks go "
                                "elsewhere", link.label, s.lost_after)
                    self._lose(link, LinkState.LOST, f"was silent for {s.lost_after:.0f} s")
                else:
                    link.send(m.Heartbeat())
            elif link.state in (LinkState.LOST, LinkState.REFUSED):
                if now - link.since > RECONNECT_AFTER:
                    link.connect(now)
            elif link.state is LinkState.AUTH_FAILED:
                if now - link.since > AUTH_RETRY_AFTER:
                    link.connect(now)
            elif link.state is LinkState.CONNECTING and now - link.since > s.lost_after / 2:
                # A few seconds (half the time after which a silent worker counts as lost).
                if ("connect", link.link_id) not in self._warned:
                    self._warned.add(("connect", link.link_id))
                    log.warning("worker %s has not answered for %.0f s (is a worker running at "
                                "that address, and reachable from here?); still trying",
                                link.label, now - link.since)
        if self.stats is not None and now - self._published >= PUBLISH_EVERY:
            self.stats.sample(now)
            self.snapshot = snapshot(self, self.stats)  # (one assignment: readers see old or new)
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
            link = next(l for l in self.links.values() if l.address == address)
            self._lose(link, LinkState.LOST, reason)
            if restarted:
                link.connect(time.monotonic())
            elif address in self.local.abandoned:
                self._fail_pending(WorkerLost, f"could not run: the local worker {reason} "
                                               f"{self.local.restarts + 1} times; see its "
                                               "messages above")

    def _fail_if_all_refused(self) -> None:
        """With every worker refusing our keys, tasks would wait forever: fail them clearly."""
        links = list(self.links.values())
        if not links or any(l.state is not LinkState.AUTH_FAILED for l in links):
            return
        self._fail_pending(AuthError, "cannot run: " + "; ".join(l.reason for l in links))

    def _fail_if_no_environment(self, now: float) -> None:
        """Every worker said (or showed) it cannot provide this Main's environment, and no
        other is on its way: tasks would wait forever; fail them naming each one's reason."""
        workers = list(self.scheduler.workers.values())
        if not workers or any(not w.unable for w in workers):
            return
        if now - self._started < self.settings.connect_timeout and any(
                link.state is LinkState.CONNECTING for link in self.links.values()):
            return
        if self._browser is not None and now - self._started < self.settings.connect_timeout:
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
        ready = [v for v in self.scheduler.workers.values()]
        if not ready and now - self._started < self.settings.connect_timeout:
            return
        if ready and all(w.unable for w in ready):
            return  # (no worker can provide the environment: the tasks fail, saying why)
        for req in self.scheduler.unmatched():
            if req in self._warned:
                continue
            self._warned.add(req)
            seen = ", ".join(f"{w.name} ({w.platform}, Python {', '.join(w.pythons)}, "
                             f"{w.slots} slots{'; lacks the environment' if w.unable else ''})"
                             for w in ready) or "none"
            log.warning("tasks need platform %s, %d thread(s) and Python %s; no connected "
                        "worker offers that (workers seen: %s). They wait for one.",
                        " or ".join(req[0]), req[1], self.python, seen)


class _Described(threading.Thread):
    """``describe()`` in a thread of its own; ``result()`` waits for it (and re-raises)."""

    def __init__(self, settings: _config.Settings, dist: Distribution) -> None:
        super().__init__(name="distrib-describe", daemon=True)
        self._args = (settings.dependencies, settings.requirements, dist, settings.cache_dir)
        self._value: Any = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            before = set(sys.modules)  # (what describing imports is distrib's, not the user's)
            from distrib.main._environment import describe

            _runtime.own_modules.update(set(sys.modules) - before)
            self._value = describe(*self._args)
        except BaseException as exc:  # (raised again in the thread that asks)
            self._error = exc

    def result(self) -> Any:
        self.join()
        if self._error is not None:
            raise self._error
        return self._value


_NONE: dict[str, int] = {}  # (no shared objects, no /dev/shm frames: one map, never changed)


def _inline_bytes(item: tuple[m.TaskSpec, list[Any]]) -> int:
    return sum(map(len, item[0].inline))

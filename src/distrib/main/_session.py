"""The Main's session: set-up, the I/O thread, and tear-down.

    user thread: f(x) -> pickle the call -> Task -> incoming deque -> wake -> Response
    I/O thread:  incoming -> Scheduler.assign -> Submit batches -> workers
                 workers -> Results -> Response._finish (callbacks, waiters)
                 workers -> NeedManifest / NeedBlobs -> workspace files, compressed
                 every tick: heartbeats, lost workers, reconnects, warnings

Only the I/O thread touches sockets and the scheduler; user threads only append to deques.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import logging
import os
import socket
import sys
import threading
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Any

import psutil
import zmq
from zmq.utils.monitor import recv_monitor_message

from distrib import _config, _runtime, _serialize
from distrib._errors import (
    AuthError,
    Cancelled,
    ConfigError,
    DistribError,
    SerializationError,
    TaskTimeout,
    WorkerCrashed,
    WorkerLost,
)
from distrib._response import Response
from distrib.main._link import Link, LinkState
from distrib.main._scheduler import Scheduler, Task, WorkerView
from distrib.wire import _codec, _facts, _transport
from distrib.wire import _messages as m
from distrib.workspace._manifest import Distribution, scan

log = logging.getLogger("distrib")

BLOB_BATCH_BYTES = 64 * 1024 * 1024
SUBMIT_BATCH = 512
RECONNECT_AFTER = 2.0
LOCAL_RESTARTS = 3  # a local worker that keeps dying is given up on
AUTH_RETRY_AFTER = 10.0  # a refused key may be authorized later (workers reread their list)


def _main_file() -> Path | None:
    """The user's main script, if it is a plain .py file (not a REPL, not a tool's entry)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not path.endswith(".py"):
        return None
    resolved = Path(path).resolve()
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        if resolved.is_relative_to(Path(prefix).resolve()):
            return None
    return resolved


def _files_being_written() -> list[Path]:
    """Files this process has open for writing (its own log, a ``> out.txt`` redirect): they
    change while tasks run, so shipping them would fail the distribution's hash check."""
    try:
        return [Path(f.path) for f in psutil.Process().open_files()
                if any(c in f.mode for c in "wa+")]
    except psutil.Error:
        return []


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
        root = settings.workspace or (main_file.parent if main_file else Path.cwd())
        cache = settings.cache_dir / "hashes" / (
            hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16] + ".msgpack")
        self.dist: Distribution = scan(root, main_file, settings.excludes, cache,
                                       skip=(settings.cache_dir, *_files_being_written()))
        _runtime.main_shipped = self.dist.main is not None
        self.name = f"{main_file.name if main_file else 'python'}@{socket.gethostname()}:{os.getpid()}"
        self.main_id = os.urandom(8).hex()
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.local = None
        workers = list(settings.workers)
        if not workers and not settings.discovery.enabled:
            from distrib._local import LocalCluster

            self.local = LocalCluster(settings.local_threads, settings.cache_dir)
            workers = [_config.WorkerAddress(a) for a in self.local.addresses]
        self.hello = m.Hello(m.PROTOCOL_VERSION, self.main_id, self.name, self.python,
                             os.getpid(), settings.forward_output,
                             settings.key.public if settings.key else "")
        self.links: dict[str, Link] = {}
        for worker in workers:
            self._add_link(worker)
        self._found: deque[Any] = deque()
        self._browser: Any = None
        if settings.discovery.enabled:
            from distrib.wire._mdns import Browser

            self._browser = Browser(self._on_found, settings.discovery.interfaces)
        self.scheduler = Scheduler(self.python)
        self.counters: dict[str, int] = {"blobs_sent": 0}
        self._ids = itertools.count(1)
        self._incoming: deque[Task] = deque()
        self._cancels: deque[int] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._awake = False
        self._closing = False
        self._warned: set[Any] = set()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="distrib-io", daemon=True)
        self._thread.start()

    def _add_link(self, worker: _config.WorkerAddress) -> Link:
        link_id = f"w{len(self.links)}"
        link = Link(link_id, worker.address, _config.endpoint(worker.address), self.ctx,
                    self.hello, worker.public_key, self.settings.key)
        self.links[link_id] = link
        return link

    # --- user threads ------------------------------------------------------------------------

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Response[Any]:
        """Pickle the call and hand it to the I/O thread; return its Response at once."""
        if self._closing:
            raise DistribError("distrib was shut down; call distrib.init() to set up again")
        frames = _serialize.dumps((fn, args, kwargs))
        opts = fn.options
        task_id = next(self._ids)
        response: Response[Any] = Response(task_id, fn.__qualname__, self._request_cancel)
        self._incoming.append(Task(task_id, fn.__qualname__, frames, opts.platform, opts.threads,
                                   opts.retries, opts.timeout, response))
        self._wake()
        return response

    def _on_found(self, found: Any) -> None:  # zeroconf's thread
        self._found.append(found)
        self._wake()

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
        if self._closing:
            return
        self._closing = True
        self._awake = False
        self._wake()
        self._thread.join(30)
        if self._browser is not None:
            self._browser.close()
        for task in list(self._incoming) + self.scheduler.all_tasks():
            task.response._finish(None, exc=Cancelled(
                f"task {task.name}#{task.task_id} did not finish before distrib shut down"))
        if self.local is not None:
            self.local.stop()

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
                        self._on_monitor(link, recv_monitor_message(mon))
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
            for link in self.links.values():
                link.send(m.Goodbye())
                link.close()
            self.ctx.term()

    def _adopt_found(self) -> None:
        """Connect to discovered workers this Main trusts (see DESIGN: discovery != trust)."""
        while self._found:
            found = self._found.popleft()
            if any(link.address == found.address for link in self.links.values()):
                continue
            verdict = self._trust(found)
            if verdict:
                if ("found", found.address) not in self._warned:
                    self._warned.add(("found", found.address))
                    log.warning("discovered worker %s at %s: %s", found.name, found.address,
                                verdict)
                continue
            log.info("discovered worker %s at %s; connecting", found.name, found.address)
            self._add_link(_config.WorkerAddress(found.address, found.public_key)).connect(
                time.monotonic())

    def _trust(self, found: Any) -> str:
        """Empty if ``found`` may be used, else why not."""
        d = self.settings.discovery
        if found.public_key is None:
            return "it announces no key, so it cannot be authenticated; not used"
        if self.settings.key is None:
            return "this Main has no key ([main] key); not used"
        if found.public_key in d.trust:
            return ""
        if not d.trust_on_first_use:
            return (f"its key {found.public_key} is not trusted; add it to [discovery] trust "
                    "(or set trust_on_first_use = true); not used")
        known_file = self.settings.cache_dir / "known_workers"
        known = {}
        if known_file.exists():
            for line in known_file.read_text().splitlines():
                address, _, key = line.partition(" ")
                known[address] = key
        if found.address in known and known[found.address] != found.public_key:
            return (f"it announces key {found.public_key}, but the key first seen at that "
                    f"address was {known[found.address]} ({known_file}); not used")
        if found.address not in known:
            known_file.parent.mkdir(parents=True, exist_ok=True)
            with open(known_file, "a") as f:
                f.write(f"{found.address} {found.public_key}\n")
            log.warning("trusting worker %s at %s on first use (key %s, remembered in %s)",
                        found.name, found.address, found.public_key, known_file)
        return ""

    def _take_incoming(self) -> None:
        while self._incoming:
            self.scheduler.add(self._incoming.popleft())
        while self._cancels:
            task_id = self._cancels.popleft()
            task, link_id = self.scheduler.withdraw(task_id)
            if link_id is not None:
                self.links[link_id].send(m.Cancel([task_id]))

    def _dispatch(self) -> None:
        for link_id, tasks in self.scheduler.assign().items():
            link = self.links[link_id]
            for i in range(0, len(tasks), SUBMIT_BATCH):
                specs, frames = [], []
                for t in tasks[i: i + SUBMIT_BATCH]:
                    inline, separate = m.split_payload(t.frames)
                    specs.append(m.TaskSpec(t.task_id, self.dist.dist_id, t.threads, t.timeout,
                                            inline, len(separate)))
                    frames.extend(separate)
                link.send(m.Submit(specs, frames=tuple(frames)))

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
            self._send_blobs(link, msg)

    def _on_welcome(self, link: Link, msg: m.Welcome) -> None:
        if link.state is LinkState.READY:
            return
        link.state, link.name, link.since = LinkState.READY, msg.name, time.monotonic()
        if msg.python != self.python:
            log.warning("worker %s runs Python %s and this Main %s: it will get no tasks "
                        "(pickled code needs the same major.minor)", link.label, msg.python,
                        self.python)
        self.scheduler.join(WorkerView(link.link_id, msg.name, msg.platform, msg.python,
                                       msg.slots))

    def _on_refused(self, link: Link, msg: m.Refused) -> None:
        was_ready = link.state is LinkState.READY
        self._lose(link, LinkState.REFUSED, msg.reason)
        if msg.reason.startswith("unknown peer"):
            link.connect(time.monotonic())  # the worker restarted: say Hello again
        elif not was_ready:
            log.warning("worker %s refused this Main: %s", link.label, msg.reason)

    def _on_monitor(self, link: Link, event: Any) -> None:
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
        failed = self.scheduler.leave(link.link_id)
        for task in failed:
            task.response._finish(link.name, exc=WorkerLost(
                f"task {task.name}#{task.task_id} was on worker {link.label}, which {reason}; "
                f"tried {task.attempts} times"))
        link.close()
        link.state, link.since, link.reason = state, time.monotonic(), reason

    def _on_results(self, link: Link, msg: m.Results) -> None:
        at = 0
        for spec in msg.results:
            frames = [*spec.inline, *msg.frames[at: at + spec.nframes]]
            at += spec.nframes
            task = self.scheduler.finish(link.link_id, spec.task_id)
            if task is None:
                continue
            self._settle(link, task, spec, frames)

    def _settle(self, link: Link, task: Task, spec: m.ResultSpec, frames: Any) -> None:
        where = f"{task.name}#{task.task_id} on worker {link.label}"
        response: Response[Any] = task.response
        if spec.status == "ok":
            try:
                response._finish(link.name, _serialize.loads(frames))
            except Exception as exc:
                response._finish(link.name, exc=SerializationError(
                    f"the result of {where} does not unpickle here: {type(exc).__name__}: {exc}"))
        elif spec.status in ("error", "env_error"):
            response._finish(link.name, exc=_serialize.loads_error(frames, spec.info))
        elif spec.status == "crashed":
            if self.scheduler.retry(task):
                log.info("%s crashed; retrying (%d of %d)", where, task.attempts, task.retries)
            else:
                response._finish(link.name, exc=WorkerCrashed(
                    f"{where} crashed: {spec.info.get('message', '')}; tried "
                    f"{task.attempts} time(s), retries={task.retries}"))
        elif spec.status == "timeout":
            response._finish(link.name, exc=TaskTimeout(
                f"{where} ran past its timeout of {task.timeout} s and was stopped"))
        else:
            response._finish(link.name, exc=Cancelled(f"{where} was cancelled"))

    def _print(self, link: Link, msg: m.Output) -> None:
        stream = sys.stderr if msg.stream == 2 else sys.stdout
        prefix = f"[{link.name}] "
        stream.write("".join(prefix + line + "\n" for line in msg.text.splitlines()))
        stream.flush()

    def _send_blobs(self, link: Link, msg: m.NeedBlobs) -> None:
        batch: list[tuple[str, bytes]] = []
        size = 0
        for digest in msg.hashes:
            path = self.dist.path_of(digest) if msg.dist == self.dist.dist_id else None
            try:
                data = path.read_bytes() if path is not None else None
            except OSError as exc:
                data, path = None, None
                log.warning("cannot read workspace file for blob %s: %s", digest[:12], exc)
            if data is None or hashlib.sha256(data).hexdigest() != digest:
                entry = self.dist.by_digest.get(digest)
                what = entry.path if entry else digest[:12]
                link.send(m.DistFailed(msg.dist, f"workspace file {what} changed or vanished "
                                                 "since the workspace was scanned; run again"))
                return
            packed = zlib.compress(data, 1)
            batch.append((digest, packed))
            size += len(packed)
            if size >= BLOB_BATCH_BYTES:
                self._send_blob_batch(link, msg.dist, batch)
                batch, size = [], 0
        if batch:
            self._send_blob_batch(link, msg.dist, batch)

    def _send_blob_batch(self, link: Link, dist: str, batch: list[tuple[str, bytes]]) -> None:
        link.send(m.Blobs(dist, [d for d, _ in batch], frames=tuple(b for _, b in batch)))
        self.counters["blobs_sent"] += len(batch)

    def _tick(self, now: float) -> None:
        s = self.settings
        for link in self.links.values():
            if link.state is LinkState.READY:
                if now - link.last_seen > s.lost_after:
                    log.warning("worker %s is silent for %.0f s: declared lost; its tasks go "
                                "elsewhere", link.label, s.lost_after)
                    self._lose(link, LinkState.LOST, f"was silent for {s.lost_after:.0f} s")
                else:
                    link.send(m.Heartbeat(0, 0))
            elif link.state in (LinkState.LOST, LinkState.REFUSED):
                if now - link.since > RECONNECT_AFTER:
                    link.connect(now)
            elif link.state is LinkState.AUTH_FAILED:
                if now - link.since > AUTH_RETRY_AFTER:
                    link.connect(now)
            elif link.state is LinkState.CONNECTING and now - link.since > s.connect_timeout:
                if ("connect", link.link_id) not in self._warned:
                    self._warned.add(("connect", link.link_id))
                    log.warning("worker %s has not answered for %.0f s; still trying",
                                link.label, s.connect_timeout)
        self._warn_unmatched(now)
        self._fail_if_all_refused()
        if self.local is not None:
            self._supervise_local()

    def _supervise_local(self) -> None:
        """A local daemon that exits is replaced; its tasks are retried on the new one."""
        assert self.local is not None
        if self.local.abandoned == set(self.local.addresses):
            self._fail_pending(WorkerLost, "cannot run: the local worker kept dying")
            return
        for address, code in self.local.dead():
            link = next(l for l in self.links.values() if l.address == address)
            reason = f"exited (code {code})"
            self._lose(link, LinkState.LOST, reason)
            if self.local.restarts >= LOCAL_RESTARTS:
                log.error("the local worker %s again; not restarting it (%d restarts)",
                          reason, self.local.restarts)
                self.local.abandoned.add(address)
                self._fail_pending(WorkerLost, f"could not run: the local worker {reason} "
                                               f"{self.local.restarts + 1} times; see its "
                                               "messages above")
                continue
            log.warning("the local worker %s; starting a new one", reason)
            try:
                self.local.restart(address)
            except DistribError as exc:
                log.error("%s", exc)
                continue
            link.connect(time.monotonic())

    def _fail_if_all_refused(self) -> None:
        """With every worker refusing our keys, tasks would wait forever: fail them clearly."""
        links = list(self.links.values())
        if not links or any(l.state is not LinkState.AUTH_FAILED for l in links):
            return
        self._fail_pending(AuthError, "cannot run: " + "; ".join(l.reason for l in links))

    def _fail_pending(self, error: type[DistribError], why: str) -> None:
        """End every task not yet sent to a worker with ``error`` ("task f#3 <why>")."""
        for task in self.scheduler.take_pending():
            task.response._finish(None, exc=error(f"task {task.name}#{task.task_id} {why}"))

    def _warn_unmatched(self, now: float) -> None:
        ready = [v for v in self.scheduler.workers.values()]
        if not ready and now - self._started < self.settings.connect_timeout:
            return
        for req in self.scheduler.unmatched():
            if req in self._warned:
                continue
            self._warned.add(req)
            seen = ", ".join(f"{w.name} ({w.platform}, Python {w.python}, {w.slots} slots)"
                             for w in ready) or "none"
            log.warning("tasks need platform %s, %d thread(s) and Python %s; no connected "
                        "worker offers that (workers seen: %s). They wait for one.",
                        " or ".join(req[0]), req[1], self.python, seen)


_session: Session | None = None
_lock = threading.Lock()


def get_session() -> Session:
    """The current session, set up from configuration on first use."""
    session = _session
    if session is not None:
        return session
    return init()


def init(
    workers: list[str | tuple[str, str]] | None = None,
    *,
    local_threads: int | None = None,
    workspace: str | Path | None = None,
    forward_output: bool | None = None,
    key: str | Path | None = None,
) -> Session:
    """Set up distrib explicitly (see ``distrib.init``)."""
    global _session
    with _lock:
        if _session is not None:
            if all(x is None for x in (workers, local_threads, workspace, forward_output, key)):
                return _session
            raise ConfigError("distrib is already set up (by init() or a first call); "
                              "call distrib.shutdown() before init() with new settings")
        main_file = _main_file()
        settings = _config.load(None, workers, local_threads, workspace, forward_output, key,
                                main_file.parent if main_file else None)
        _session = Session(settings, main_file)
        atexit.register(shutdown)
        return _session


def shutdown() -> None:
    """Tear down the session: unfinished tasks end as Cancelled, local workers stop."""
    global _session
    with _lock:
        session, _session = _session, None
    if session is not None:
        session.close()

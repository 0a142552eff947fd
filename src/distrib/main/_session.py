"""The Main's session: its life cycle, and the user threads' side of it.

    init:         scan the workspace, describe the environment, link to the workers, start
                  the I/O thread (``_loop``)
    user threads: f(x) -> pickle the call -> Task -> Inbox (``_handoff``: a deque and a byte)
                  -> Response; cancel -> Inbox
    close:        stop the I/O thread (it says goodbye to workers), end what is left as
                  Cancelled, stop the local cluster

Only the I/O thread touches sockets and the scheduler; user threads only append to deques.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from distrib import _config, _runtime, _shared, _shm
from distrib._errors import Cancelled, SerializationError
from distrib._response import Response
from distrib.main._link import Link
from distrib.main._links import Links
from distrib.main._listener import Listener
from distrib.main._handoff import Inbox, in_shm, share_in_shm
from distrib.main._loop import Loop
from distrib.main._nested import Nested
from distrib.main._prefill import prefill
from distrib.main._scheduler import Scheduler
from distrib.main._tracked import Task
from distrib.main._shipping import forwarded_environ, preload_modules, scan_workspace
from distrib.main._stats import Stats, snapshot
from distrib.wire import _facts, _reach
from distrib.wire import _messages as m
from distrib.wire._envspec import EnvSpec
from distrib.wire._limits import MAX_MESSAGE_BYTES, MAX_PAYLOAD_BYTES
from distrib.wire._link import LinkState
from distrib.workspace._manifest import Distribution

if TYPE_CHECKING:
    from distrib._local import LocalCluster
    from distrib.wire._relayed import RelayParty

log = logging.getLogger("distrib")

SCAN_NOTICE_SECONDS = 1.0  # a scan of the workspace this slow says so
WARM_WAIT = 60.0  # the most init() waits for the local worker's executors



def _setup_logging() -> None:
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("distrib: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)


class Session:
    """Everything a Main holds while it uses workers."""

    def __init__(self, settings: _config.Settings, main_file: Path | None,
                 local: LocalCluster | None = None) -> None:
        """``local``: the embedded cluster, its daemon starting (it is stopped here if the
        session fails to start): its start overlaps the scan and the description below."""
        _setup_logging()
        self.settings = settings
        self.python = _facts.python_version()
        start = time.monotonic()
        self.local = local
        workers = list(settings.workers)
        if self.local is not None:
            workers = [_config.WorkerAddress(a) for a in self.local.addresses]
        # (the local daemon, if this fails, is stopped by whoever started it)
        self.dist: Distribution = scan_workspace(settings, main_file)
        if time.monotonic() - start > SCAN_NOTICE_SECONDS:
            log.warning("scanned the workspace %s: %d files, %.0f MB in %.1f s",
                        self.dist.root, len(self.dist.entries),
                        sum(e.size for e in self.dist.entries) / 1e6, time.monotonic() - start)
        self.env, self.wheels = (EnvSpec(self.python), {}) if _runs_here(settings, local) \
            else _describe(settings, self.dist)
        _runtime.main_shipped = self.dist.main is not None
        _runtime.shipped_root = str(self.dist.root) if self.dist.entries else None
        self.name = f"{main_file.name if main_file else 'python'}@{socket.gethostname()}:{os.getpid()}"
        self.main_id = os.urandom(8).hex()
        self.ctx: zmq.Context[Any] = zmq.Context()
        forwarded = forwarded_environ(self.dist, settings.forward_env, os.environ,
                                      settings.cache_dir)
        self._probe = None
        if settings.shared_memory:
            _shm.remove_stale()
            self._probe = _shm.probe(os.getpid())
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
        self.inbox = Inbox()
        self.scheduler = Scheduler(self.python)
        self.nested = Nested(self.scheduler, self._next_id, self._send_to, self.inbox.cancel)
        self._ids = itertools.count(1)
        self._closing = False
        self.on_close: list[Callable[[], None]] = []  # (what launched its workers ends)
        self._closing_lock = threading.Lock()  # no call slips in while close() drains
        self._started = time.monotonic()
        # With a dashboard: counts kept by the I/O thread, and the snapshot it publishes.
        self.stats = Stats(sum(e.size for e in self.dist.entries)) if settings.dashboard \
            else None
        self.snapshot: dict[str, Any] | None = None
        self._warmed = threading.Event()  # the local worker's executors are ready (or never)
        link_hello = self.hello
        if self.local is not None:  # (ours alone: all its slots get an executor ahead)
            link_hello = msgspec.structs.replace(link_hello, warm=settings.local_threads)
        listener = None
        if settings.listen is not None:
            assert settings.key is not None and settings.authorized_workers is not None
            try:
                listener = Listener(self.ctx, settings.listen, settings.key,
                                    settings.authorized_workers)
            except BaseException:  # (the embedded cluster is its starter's to stop)
                self.ctx.term()
                raise
        if self.local is not None:  # (all the above was done while its daemon started)
            try:
                prefill(self.local.store, self.dist, self.local.starting)
                self.local.wait_ready()
            except BaseException:
                self.ctx.term()
                raise
        relay = _relay(settings)
        self.linked = Links(settings, self.ctx, link_hello, self.scheduler, self.nested,
                            self.stats, self._warmed, self.inbox.wake, self._probe is not None,
                            listener, relay)
        self.links: dict[str, Link] = self.linked.links
        for worker in workers:
            self.linked.add(worker)
        self._browser: Any = None
        if settings.discovery.enabled:
            from distrib.wire._mdns import Browser

            self._browser = Browser(self.linked.on_found, settings.discovery.interfaces)
        self._loop = Loop(settings, self.dist, self.env, self.wheels, self.scheduler,
                          self.nested, self.linked, self.inbox, self.stats, self._warmed,
                          self.local, self._started, self._publish)
        self.received: Counter[str] = self._loop.received  # messages from workers, by kind
        self._thread = threading.Thread(target=self._loop.run, name="distrib-io", daemon=True)
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

    # --- user threads ------------------------------------------------------------------------

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Response[Any]:
        """Pickle the call and hand it to the I/O thread; return its Response at once.

        A call during or after ``close()`` ends at once as ``Cancelled``."""
        frames, shared = _shared.dumps_call(fn, fn.named(), args, kwargs)
        cap, size = self.settings.max_payload, m.payload_size(frames)
        if cap is not None and size > cap:
            raise SerializationError(
                f"the arguments of {fn.__qualname__} pickle to {size:,} bytes, more than "
                f"max_payload ({cap:,} bytes, {self.settings.source}); pass less, or raise "
                "the setting")
        if size > MAX_PAYLOAD_BYTES:
            raise SerializationError(
                f"the arguments of {fn.__qualname__} pickle to {size:,} bytes, more than "
                f"one message to a worker carries ({MAX_PAYLOAD_BYTES:,} bytes); pass less, "
                "or pass it in parts")
        opts = fn.options
        task_id = next(self._ids)
        response: Response[Any] = Response(task_id, fn.__qualname__, self.inbox.cancel)
        task = Task(task_id, fn.__qualname__, frames, opts.platform, opts.threads, opts.retries,
                    opts.timeout, response, opts.outputs, shared=shared,
                    speculative=opts.speculative)
        if self._probe is not None and (self.local is not None or self.linked.any_shm):
            if _shm.worth(frames):
                in_shm(task)  # here, not in the I/O thread: it copies the large frames
            for obj in (shared or {}).values():
                if obj.nbytes >= _shm.MIN:
                    share_in_shm(obj)
        with self._closing_lock:
            if not self._closing:
                self.inbox.put(task)
                return response
        response._set_outcome(None, exc=Cancelled(
            f"task {fn.__qualname__}#{task_id}: distrib was shut down; call distrib.init() "
            "to set up again"))
        return response

    def _next_id(self) -> int:
        return next(self._ids)

    def _send_to(self, link_id: str, msg: m.Message) -> None:
        self.linked.send_to(link_id, msg)

    def load(self) -> tuple[int, int, int]:
        """(Any thread) slots busy, slots offered, unfinished tasks: a launcher's demand."""
        figures = self.scheduler.slot_figures
        return figures.busy, figures.offered, figures.tasks + len(self.inbox.incoming)

    def _publish(self, now: float) -> None:
        """(I/O thread, with a dashboard) A new snapshot for it."""
        assert self.stats is not None
        self.stats.sample(now)
        self.snapshot = snapshot(  # (one assignment: readers see old or new)
            self.stats, self.links.values(), self.scheduler, self.dist,
            {"name": self.name, "python": self.python, "uptime": time.monotonic() - self._started})

    def listen_address(self) -> str | None:
        """Where workers dial this Main (``tcp://host:port``), or None."""
        listener = self.linked.listener
        return listener.address if listener is not None else None

    def dialled_in(self) -> int:
        """How many workers that dialled this Main are ready for tasks (any thread)."""
        while True:
            try:
                return sum(link.dialled_in and link.state is LinkState.READY
                           for link in list(self.links.values()))
            except RuntimeError:  # (the I/O thread changed the links meanwhile)
                continue

    def close(self) -> None:
        """Stop the I/O thread (saying goodbye to workers) and the local cluster."""
        with self._closing_lock:
            if self._closing:
                return
            self._closing = True
        self._loop.stopping = True
        self.inbox.wake(again=True)
        self._thread.join(30)
        for end in self.on_close:
            end()
        if self.dashboard is not None:
            self.dashboard.stop()
        if self._browser is not None:
            self._browser.close()
        for task in list(self.inbox.incoming) + self.scheduler.all_tasks():
            task.response._set_outcome(None, exc=Cancelled(
                f"task {task.name}#{task.task_id} did not finish before distrib shut down"))
        if self.local is not None:
            self.local.stop()
        if self._probe is not None:
            _shm.remove_of(os.getpid())


def _relay(settings: _config.Settings) -> RelayParty | None:
    """This Main's party at the relay, when some worker is reached through it."""
    if settings.relay is None or not any(w.address.startswith(_reach.RELAYED)
                                         for w in settings.workers):
        return None
    from distrib.wire._relayed import RelayParty  # (asyncio: only where a relay is used)

    assert settings.relay_key is not None and settings.key is not None
    return RelayParty(settings.relay, settings.relay_key, settings.key).start()


def _runs_here(settings: _config.Settings, local: LocalCluster | None) -> bool:
    """Tasks run in this very interpreter: the embedded cluster's daemon is this Python with
    its packages, so describing them ("auto", reading every distribution's metadata: up to a
    second in a large environment, on a first run's critical path) would only tell it what it
    has. A requirements file is still shipped: the user asked for those packages."""
    return local is not None and settings.dependencies == "auto" \
        and settings.requirements is None


def _describe(settings: _config.Settings, dist: Distribution
              ) -> tuple[EnvSpec, dict[str, Path]]:
    """This Main's environment for workers (``_environment.describe``); what describing
    imports is distrib's, not the user's."""
    before = set(sys.modules)
    from distrib.main._environment import describe

    _runtime.own_modules.update(set(sys.modules) - before)
    return describe(settings.dependencies, settings.requirements, dist, settings.cache_dir)

"""The Main's links to its workers: how each one joins, changes and leaves (I/O thread only).

A link says Hello and waits; a ``Welcome`` joins the worker to the scheduler, a ``Refused``
or a failed key handshake puts it aside, and silence, a closed connection or its owner's drain
make it leave (its tasks go elsewhere). Every tick sends heartbeats and tries again the links
that failed (the timing is ``_health``'s). Each worker hears of the others (``Peers``), and
workers found on the LAN are linked to when ``_discovery`` trusts them. A worker that dials
this Main (``_listener``) says ``Dial`` and is greeted with the same Hello; its link lives as
long as its connection (it dials again when that closes).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from distrib import _config, _values
from distrib._errors import WorkerLost
from distrib.main import _discovery
from distrib.main._health import link_policy
from distrib.main._link import PING_EVERY, Link
from distrib.main._listener import Listener
from distrib.main._nested import Nested
from distrib.main._scheduler import Scheduler
from distrib.main._tracked import WorkerView
from distrib.main._stats import Stats
from distrib.wire import _messages as m
from distrib.wire import _reach
from distrib.wire._link import LinkCheck, LinkState, MonitorEvent
from distrib.wire._messages import RefusalCode

if TYPE_CHECKING:  # (imported where a relay is used: it brings asyncio)
    from distrib.wire._relayed import RelayParty

log = logging.getLogger("distrib")

PEERS_AT_ONCE = 16  # up to this many workers, each hears of a change of the others at once
PEERS_EVERY = 1.0  # past it, seconds between the rounds of Peers while workers come and go


class Links:
    """The links to workers, by link id (``w0``, ``w1``...), and what their changes do."""

    def __init__(self, settings: _config.Settings, ctx: zmq.Context[Any], hello: m.Hello,
                 scheduler: Scheduler, nested: Nested, stats: Stats | None,
                 warmed: threading.Event, wake: Callable[[], None], shm: bool,
                 listener: Listener | None = None, relay: RelayParty | None = None) -> None:
        self.settings = settings
        self.ctx = ctx
        self.hello = hello  # as each link says it
        self.scheduler = scheduler
        self.nested = nested
        self.stats = stats
        self.warmed = warmed  # set when no executors are started ahead (see ``Session``)
        self.wake = wake  # wakes the I/O thread (for workers found, in zeroconf's thread)
        self.shm = shm  # this Main's /dev/shm can be shared (a probe file is there)
        self.policy = link_policy(settings.lost_after)
        self.links: dict[str, Link] = {}
        self.listener = listener  # workers dial this Main there (None: it does not listen)
        self.relay = relay  # "relay:KEY" workers are reached through it
        self.dialled: dict[bytes, Link] = {}  # the links of workers that dialled, by routing id
        self._ids = itertools.count()
        self._dialled_ids = itertools.count()
        self.any_shm = False  # a worker shares /dev/shm: calls write large frames there
        self._peers_told: dict[str, list[list[Any]]] = {}  # per link: the Peers it last heard
        self._found: deque[Any] = deque()
        self._beat_at = 0.0  # when the last round of heartbeats went out
        self._peers_at = 0.0  # when the workers last heard of each other
        self._peers_due = False  # a change they have not heard of yet
        self._warned: set[tuple[str, str]] = set()

    def add(self, worker: _config.WorkerAddress) -> Link:
        link_id = f"w{next(self._ids)}"
        endpoint = _values.endpoint(worker.address)
        if worker.address.startswith(_reach.RELAYED):
            # A local socket spliced through the relay to the worker's: CURVE runs end to end.
            assert self.relay is not None and worker.public_key is not None
            endpoint = self.relay.forward(worker.public_key, "ipc://")
        link = Link(link_id=link_id, address=worker.address, endpoint=endpoint, ctx=self.ctx,
                    server_key=worker.public_key, key=self.settings.key)
        self.links[link_id] = link
        return link

    def send_to(self, link_id: str, msg: m.Message) -> None:
        link = self.links.get(link_id)
        if link is not None and link.state is LinkState.READY:
            link.send(msg)

    def connect(self, link: Link, now: float) -> None:
        """(Re)build ``link``'s socket and say Hello (a worker that dialled: say Hello on its
        connection again)."""
        if link.dialled_in:
            self.links[link.link_id] = self.dialled[link.routing_id] = link
        link.connect(now, self.hello)

    def connect_all(self, now: float) -> None:
        for link in self.links.values():
            self.connect(link, now)

    def goodbye(self) -> None:
        """Say goodbye to every worker, close the links and end their context (the I/O
        thread ends)."""
        for link in self.links.values():
            link.send(m.Goodbye())
            link.close()
        if self.listener is not None:
            self.listener.close()
        self.ctx.term()
        if self.relay is not None:
            self.relay.close()

    # --- discovery ---------------------------------------------------------------------------

    def on_found(self, found: Any) -> None:  # zeroconf's thread
        self._found.append(found)
        self.wake()

    def adopt_found(self) -> None:
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
            self.connect(self.add(_config.WorkerAddress(found.address, found.public_key)),
                         time.monotonic())

    # --- workers that dial ------------------------------------------------------------------

    def on_dial(self, routing_id: bytes, msg: m.Dial, key: str, fd: int, address: str) -> None:
        """A worker dialled this Main (its key passed the listener's check): greet it."""
        assert self.listener is not None
        old = self.dialled.get(routing_id)
        if old is not None:  # (it starts over on the same connection)
            self.lose(old, LinkState.LOST, "dialled again")
        if msg.protocol != m.PROTOCOL_VERSION:
            log.warning("worker %s dialled from %s with protocol %d; this Main speaks %d: "
                        "not used", msg.name, address, msg.protocol, m.PROTOCOL_VERSION)
            return
        known = self.listener.name_of(key)
        link = Link(link_id=f"d{next(self._dialled_ids)}", address=f"{address}, dialled in",
                    endpoint="", ctx=self.ctx, server_key=key, key=self.settings.key,
                    routing_id=routing_id, router=self.listener.sock, fd=fd)
        log.info("worker %s (key %s%s) dialled in from %s", msg.name, key[:8],
                 f", {known}" if known else "", address)
        self.links[link.link_id] = self.dialled[routing_id] = link
        self.connect(link, time.monotonic())

    def on_closed(self, fds: list[int]) -> None:
        """Connections of workers that dialled closed: they are lost (their tasks go
        elsewhere now)."""
        for link in [x for x in self.dialled.values() if x.fd in fds]:
            self.on_monitor(link, MonitorEvent.DISCONNECTED)
            if link.routing_id in self.dialled:  # (one that had not said Welcome yet)
                self.lose(link, LinkState.LOST, "closed the connection")

    # --- what workers say --------------------------------------------------------------------

    def on_welcome(self, link: Link, msg: m.Welcome) -> None:
        if link.state is LinkState.READY:
            return
        link.state, link.name, link.since = LinkState.READY, msg.name, time.monotonic()
        link.max_frame = max(1, msg.max_frame)
        link.worker_state = "serving"
        link.shm = msg.shm and self.shm
        self.any_shm = self.any_shm or link.shm
        if msg.environment:
            log.warning("worker %s gets no tasks: %s", link.label, msg.environment)
        self.scheduler.join(WorkerView(link.link_id, msg.name, msg.platform, msg.python,
                                       msg.slots, pythons=tuple(msg.pythons),
                                       unable=msg.environment,
                                       memory_limit=msg.memory_limit))
        self.tell_peers()
        link.round_trips.clear()
        self.ping(link, time.monotonic())  # (its round trip sizes what it is sent ahead)

    def ping(self, link: Link, now: float) -> None:
        link.pinged = now
        link.send(m.Ping(now))

    def on_pong(self, link: Link, msg: m.Pong) -> None:
        """A round trip of ``link`` measured: the scheduler sends it enough tasks ahead."""
        took = time.monotonic() - msg.sent
        view = self.scheduler.workers.get(link.link_id)
        if view is None or not 0 <= took < self.policy.lost_after:  # (not a Ping of ours)
            return
        link.round_trips.append(took)
        view.round_trip = min(link.round_trips)

    def tell_peers(self, gone: Link | None = None) -> None:
        """Each worker hears of the others (``Peers``): its tasks' calls may go to them
        directly, and those with keys may send it calls on this Main's behalf (``gone``: a
        worker that left, told anew if it comes back)."""
        if gone is not None:
            self._peers_told.pop(gone.link_id, None)
        now = time.monotonic()
        if len(self.scheduler.workers) > PEERS_AT_ONCE and now - self._peers_at < PEERS_EVERY:
            # Telling each of N workers of the N - 1 others costs O(N^2) per change: when
            # hundreds join in a burst, the changes of a second are told together (a tick).
            self._peers_due = True
            return
        self._peers_at, self._peers_due = now, False
        # (a worker that dialled, or that is reached through the relay, cannot be reached by
        # the others, nor told of them: its tasks' calls go through this Main)
        ready = [x for x in self.links.values() if x.state is LinkState.READY
                 and not x.dialled_in and not x.address.startswith(_reach.RELAYED)]
        for link in ready:
            workers = [[x.address, x.server_key or "", x.name,
                        view.slots if (view := self.scheduler.workers.get(x.link_id)) else 0]
                       for x in ready if x is not link]
            if self._peers_told.get(link.link_id) != workers:
                self._peers_told[link.link_id] = workers
                link.send(m.Peers(workers))

    def on_state(self, link: Link, msg: m.WorkerState) -> None:
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

    def drained(self, link: Link) -> bool:
        """A draining worker left: a clean leave (its tasks go elsewhere, no try counted)."""
        if link.worker_state != "draining" or link.state is not LinkState.READY:
            return False
        log.warning("worker %s left: drained by its owner", link.label)
        view = self.scheduler.workers.get(link.link_id)
        inflight = list(view.inflight.values()) if view is not None else []
        self.scheduler.leave(link.link_id, clean=True)
        self.nested.worker_left(link.link_id, inflight)
        link.down(LinkState.LOST, time.monotonic(), "drained")
        link.worker_state = "serving"  # (a worker started again at its address is new)
        self.tell_peers(gone=link)
        return True

    def on_refused(self, link: Link, msg: m.Refused) -> None:
        if msg.code is RefusalCode.SHUTTING_DOWN and self.drained(link):
            return
        was_ready = link.state is LinkState.READY
        self.lose(link, LinkState.REFUSED, msg.reason)
        if msg.code in (RefusalCode.UNKNOWN_PEER, RefusalCode.MALFORMED):
            self.connect(link, time.monotonic())  # the worker forgot this Main: say Hello again
        elif not was_ready:
            log.warning("worker %s refused this Main: %s", link.label, msg.reason)

    def on_monitor(self, link: Link, event: MonitorEvent) -> None:
        if event is MonitorEvent.CONNECTED:
            return
        if event is MonitorEvent.DISCONNECTED:
            # A worker killed with -9, or a network that reset the connection: its tasks go
            # elsewhere now instead of after lost_after seconds of silence.
            if self.drained(link):
                return
            if link.state is LinkState.READY:
                log.warning("worker %s closed the connection: declared lost; its tasks go "
                            "elsewhere", link.label)
                self.lose(link, LinkState.LOST, "closed the connection")
            return
        if link.state is LinkState.AUTH_FAILED or self.relay_refuses(link):
            return
        if event in (MonitorEvent.KEY_UNPROVEN, MonitorEvent.HANDSHAKE_TIMEOUT) and \
                link.address.startswith(_reach.RELAYED):
            self.unspliced(link)
            return
        if event is MonitorEvent.HANDSHAKE_TIMEOUT:
            reason = (f"took the connection but did not finish the handshake in "
                      f"{link.handshake_seconds():.0f} s: it may be frozen or overloaded, or "
                      "something else listens at that address")
            log.warning("worker %s %s; tried again later", link.label, reason)
            self.lose(link, LinkState.LOST, reason)
            return
        if event is MonitorEvent.KEY_REFUSED:
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
        self.lose(link, LinkState.AUTH_FAILED, reason)

    # --- leaving -----------------------------------------------------------------------------

    def lose(self, link: Link, state: LinkState, reason: str) -> None:
        """The worker left (``state``, for ``reason``): its tasks are retried elsewhere, or
        fail when they were tried too often."""
        view = self.scheduler.workers.get(link.link_id)
        inflight = list(view.inflight.values()) if view is not None else []
        failed = self.scheduler.leave(link.link_id)
        for task in failed:
            task.response._set_outcome(link.name, exc=WorkerLost(
                f"task {task.name}#{task.task_id} was on worker {link.label}, which {reason}; "
                f"tried {task.attempts} times"))
        if self.stats is not None:
            for task in inflight:
                self.stats.counted(task, link.name, "", True)
        self.nested.worker_left(link.link_id, inflight)
        link.down(state, time.monotonic(), reason)
        link.building = link.has_workspace = False  # (a worker started again says anew)
        if link.dialled_in:  # (it dials again, on a new connection: a new link)
            self.links.pop(link.link_id, None)
            self.dialled.pop(link.routing_id, None)
        self.tell_peers(gone=link)
        self.warmed.set()  # (no executors ahead: its Welcome or calls say why)

    def unspliced(self, link: Link) -> None:
        """The splice to a relayed worker closed in the handshake: the worker is not
        registered at the relay (not started yet, or the relay restarted), or its owner does
        not authorize this Main's key. Not an answer about keys: tried again, tasks wait."""
        assert self.relay is not None
        if ("unspliced", link.link_id) not in self._warned:
            self._warned.add(("unspliced", link.link_id))
            log.warning("worker %s cannot be reached through relay %s (is it registered "
                        "there, and does it authorize this Main's key?); still trying",
                        link.label, self.relay.relay)
        self.lose(link, LinkState.LOST, f"cannot be reached through relay {self.relay.relay}")

    def relay_refuses(self, link: Link) -> bool:
        """The relay refused this Main's key: ``link``, reached through it, cannot be made
        (its tasks fail with ``AuthError`` when no other worker can take them)."""
        relay = self.relay
        if relay is None or not relay.refused or link.state is not LinkState.CONNECTING or \
                not link.address.startswith(_reach.RELAYED):
            return False
        mine = self.settings.key.public if self.settings.key else "(none)"
        reason = (f"relay {relay.relay} refused this Main's key {mine}: its owner must add "
                  "this Main's public key (its .pub line) to the relay's authorized keys")
        if ("relay", reason) not in self._warned:
            self._warned.add(("relay", reason))
            log.warning("%s", reason)
        self.lose(link, LinkState.AUTH_FAILED, reason)
        return True

    def tick(self, now: float) -> None:
        """Heartbeats, silent workers lost, failed links tried again (``_health``)."""
        lost_after = self.policy.lost_after
        # Heartbeats every heartbeat interval, not every tick: with hundreds of workers they
        # would outnumber the tasks' messages.
        beat = now - self._beat_at >= self.settings.heartbeat_interval * 0.9
        if beat:
            self._beat_at = now
        if self._peers_due and now - self._peers_at >= PEERS_EVERY:
            self.tell_peers()
        if self.listener is not None:
            self.listener.reload()
        for link in list(self.links.values()):
            check = link.check(now, self.policy)
            if link.dialled_in and check is LinkCheck.SLOW and now - link.since > lost_after:
                log.info("worker %s dialled in and did not answer Hello: dropped", link.label)
                self.lose(link, LinkState.LOST, "did not answer")
                continue
            if self.relay_refuses(link):
                continue
            if check is LinkCheck.LOSE:
                log.warning("worker %s is silent for %.0f s: declared lost; its tasks go "
                            "elsewhere", link.label, lost_after)
                self.lose(link, LinkState.LOST, f"was silent for {lost_after:.0f} s")
            elif check is LinkCheck.HEARTBEAT:
                if link.state is LinkState.READY and now - link.pinged >= PING_EVERY:
                    self.ping(link, now)  # (its round trip, measured again; a heartbeat too)
                elif beat:
                    link.send(m.Heartbeat())
            elif check is LinkCheck.CONNECT:
                self.connect(link, now)
            elif check is LinkCheck.SLOW and not link.dialled_in and \
                    ("connect", link.link_id) not in self._warned:
                self._warned.add(("connect", link.link_id))
                log.warning("worker %s has not answered for %.0f s (is a worker running at "
                            "that address, and reachable from here?); still trying",
                            link.label, now - link.since)

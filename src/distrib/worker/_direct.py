"""Calls made inside tasks that this worker places itself (``redistribution`` "direct", or
"auto" where it can): run here, or sent to another worker of the same Main, never through
the Main.

The Main's ``Peers`` names its other workers. To send one a call, this worker connects to it
with its own key, saying Hello as the Main's *delegate*; the other worker takes it only if the
Main's own ``Peers`` there names this worker's key (the owner also lists it in that worker's
authorized keys), and counts the call under that Main for fair share and quotas. A target
that lacks the Main's workspace fetches it from this worker's store.

Each call is a ``PlacedCall`` here until its outcome goes to its parent's executor: crashes are
retried per its ``retries``, calls handed back (``DEFERRED``) or on a worker that was lost
are placed again, and a parent that ends (or moves, or whose Main leaves) cancels its calls
wherever they are. The Main hears of each placement (``Placed``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import zmq

from distrib._values import endpoint
from distrib._errors import ConfigError, NestedDeadlock
from distrib._sustained import Sustained
from distrib.wire import _codec, _link
from distrib.wire import _messages as m
from distrib.wire._keys import KeyPair
from distrib.wire._link import LinkCheck, LinkPolicy, LinkState, MonitorEvent
from distrib.wire._messages import Outcome, RefusalCode
from distrib.wire._payload import blob_batches, join_payloads, split_payload
from distrib.wire._record import ErrorRecord
from distrib.worker._placement import (
    CancelHere, Deliver, Effect, Here, PlacedCall, Reach, Relay, RunHere, SendTo, Tell, ToMain,
    delivery, place)

log = logging.getLogger("distrib.worker")

LOCAL = b"\x00direct"  # ``QueuedTask.reply`` of a call placed here: its outcome goes to Direct
FIRST_ID = m.WORKER_IDS  # ids this worker gives the calls it places or takes for a Main
RETRY_AFTER = 3.0  # seconds before a worker that refused (or was lost) is tried again
DEADLOCK_AFTER = 2.0  # seconds every reachable slot is held by waiting tasks before calls fail


class Target(_link.Link, eq=False, kw_only=True):
    """Another worker of a Main, as this worker sends it that Main's calls."""

    name: str
    platform: str = ""
    offered: int = 0
    paused: bool = False
    stuck: bool = False


class Host(Protocol):
    """What ``Direct`` asks of its worker; what it does there, it hands to ``apply_effects``."""

    def hello(self, main: bytes) -> m.Hello | None:
        """The Main's Hello as its delegate says it (None: the Main is not served here)."""

    def here(self, main: bytes, threads: int) -> Here:
        """This worker, for a call of ``main`` of ``threads`` threads."""

    def runs(self, ex_id: int, run_id: int) -> bool:
        """Executor ``ex_id`` still runs its task ``run_id``."""

    def running_here(self, cid: int) -> bool:
        """The call ``cid`` placed here runs now (not queued)."""

    def manifest(self, dist: str) -> bytes | None:
        """A distribution's manifest, if it is here."""

    def blob(self, dist: str, digest: str) -> bytes | None:
        """A blob of a distribution here, if it is."""

    def apply_effects(self, effects: Sequence[Effect]) -> None:
        """Do these at once (a call run here counts in the load the next placement sees)."""


class Direct:
    """The calls this worker places itself, and its connections to other workers for them."""

    def __init__(self, name: str, ctx: zmq.Context[Any], key: KeyPair | None,
                 lost_after: float, host: Host) -> None:
        self.name = name
        self.ctx = ctx
        self.key = key
        self.lost_after = lost_after
        self.policy = LinkPolicy(lost_after=lost_after, retry_after=RETRY_AFTER,
                                 auth_retry_after=RETRY_AFTER, lose_connecting=True)
        self.host = host
        self.ids = itertools.count(FIRST_ID)
        self.children: dict[int, PlacedCall] = {}
        self.peers: dict[bytes, list[list[Any]]] = {}  # per Main: its Peers, as sent
        self.links: dict[bytes, dict[str, Target]] = {}  # per Main: address -> connection
        # The Mains with calls placed here: only their links may have sockets and timers
        # (ten Mains of a hundred workers name a thousand links here, most never used)
        self.placing: set[bytes] = set()
        self.relayed: dict[bytes, dict[tuple[int, int, int], int]] = {}  # per Main: calls
        # relayed and not answered yet: (executor, run id, number) -> the parent's id
        self.placed = {"here": 0, "sent": 0, "relayed": 0}  # counters for status
        self._deadlock = Sustained(DEADLOCK_AFTER)

    @property
    def targets(self) -> dict[tuple[bytes, str], Target]:
        """Every link, by (Main, address)."""
        return {(main, address): t for main, links in self.links.items()
                for address, t in links.items()}

    def _used(self) -> list[tuple[bytes, Target]]:
        """The links of the Mains with calls placed here (the others are all new)."""
        return [(main, t) for main in self.placing for t in self.links.get(main, {}).values()]

    # --- the Main's word -----------------------------------------------------------------------

    def set_peers(self, main: bytes, workers: list[list[Any]], now: float) -> None:
        """The Main's other workers: connections to ones gone are closed, new ones opened
        when a call first needs them."""
        self.peers[main] = workers
        listed = {str(w[0]) for w in workers}
        links = self.links.setdefault(main, {})
        for address, target in list(links.items()):
            if address not in listed:
                self._drop_target(main, target, "is no longer one of its Main's workers")
        for address, key, name, _ in workers:
            known = links.get(address)
            if known is not None:
                known.name = name or known.name
            elif key and self.key is not None:
                links[address] = Target(address=address, endpoint="", ctx=self.ctx,
                                        server_key=key, key=self.key, name=name)

    def main_left(self, main: bytes) -> None:
        """The Main was dropped here: its calls' parents are stopped; its connections go."""
        for child in [c for c in self.children.values() if c.main == main]:
            self._cancel(child)
        for target in self.links.pop(main, {}).values():
            target.close()
        self.placing.discard(main)
        self.peers.pop(main, None)
        self.relayed.pop(main, None)

    # --- calls ------------------------------------------------------------------------------

    @staticmethod
    def mode(asked: str, main_default: str, outputs: bool) -> str:
        """How a call goes: "relayed", "direct" or "auto". A call whose function sends files
        back (``outputs``) goes through the Main, which writes them."""
        return "relayed" if outputs else asked or main_default or "auto"

    def place(self, child: PlacedCall, now: float) -> bool:
        """Place a call: False if it should go through its Main instead (``auto``, no free
        slot here or on the workers reachable directly, and the Main has others)."""
        action = self._place(child, now)
        if not isinstance(action, (RunHere, SendTo)):  # (``ToMain``, for a new call)
            return False
        self.children[child.cid] = child
        self._apply(action)
        where = self.name if child.at == "" else self.links[child.main][child.at].name
        self.host.apply_effects([Tell(child.main, m.Placed(child.parent, child.number, child.name,
                                                   where))])
        return True

    def relay(self, main: bytes, ex_id: int, run_id: int, number: int, parent: int) -> None:
        """A call went through its Main (counted, to weigh the Main against this worker and
        the ones reachable directly)."""
        self.placed["relayed"] += 1
        self.relayed.setdefault(main, {})[(ex_id, run_id, number)] = parent

    def relay_answered(self, main: bytes, ex_id: int, run_id: int, number: int) -> None:
        self.relayed.get(main, {}).pop((ex_id, run_id, number), None)

    def _place(self, child: PlacedCall, now: float) -> RunHere | SendTo | Deliver | Relay | ToMain:
        """Decide where ``child`` goes (``_placement.place``), connecting first the links of
        its Main that are due."""
        self.placing.add(child.main)
        targets = list(self.links.get(child.main, {}).items())
        sent: Counter[str] = Counter()  # threads of the Main's calls at each worker
        if targets:  # (a walk over every placed call: only where there is a choice to weigh)
            for c in self.children.values():
                if c.main == child.main:
                    sent[c.at] += c.threads
        reach = [Reach(address, t.state is LinkState.READY,
                       t.check(now, self.policy) is LinkCheck.CONNECT, t.platform, t.offered,
                       t.paused, t.stuck, sent[address])
                 for address, t in targets]
        others = self.peers.get(child.main)
        placement = place(child, self.host.here(child.main, child.threads), reach,
                          None if others is None else [(str(w[0]), int(w[3])) for w in others])
        for address in placement.connect:
            self._connect(child.main, self.links[child.main][address], now)
        return placement.action

    def _apply(self, action: RunHere | SendTo) -> None:
        child = action.child
        child.at, child.later = ("" if isinstance(action, RunHere) else action.address), False
        if isinstance(action, RunHere):
            self.placed["here"] += 1
            self.host.apply_effects([action])
            return
        self.placed["sent"] += 1
        inline, frames = split_payload(child.frames)
        self.links[child.main][action.address].send(m.Submit([m.TaskSpec(
            child.cid, child.dist, child.threads, child.timeout, child.attempts, inline,
            len(frames), depth=child.depth)], frames=tuple(frames)))

    def cancel(self, ex_id: int, run_id: int, number: int) -> bool:
        """The parent cancelled its call ``number``: whether it was one placed here."""
        for child in self.children.values():
            if child.ex_id == ex_id and child.run_id == run_id and child.number == number:
                self._cancel(child)
                return True
        return False

    def _cancel(self, child: PlacedCall) -> None:
        self.children.pop(child.cid, None)
        if child.later:
            return
        if child.at == "":
            self.host.apply_effects([CancelHere(child)])
        elif (target := self.links.get(child.main, {}).get(child.at)) is not None:
            target.send(m.Cancel([child.cid]))

    def outcome(self, cid: int, outcome: Outcome, info: dict[str, str],
                frames: list[Any]) -> None:
        """How a call placed here or sent to a target ended."""
        child = self.children.get(cid)
        if child is None:
            return
        if outcome is Outcome.DEFERRED:
            child.later = True  # (placed again at the next tick, wherever there is room)
            return
        if outcome is Outcome.CRASHED and child.attempts < child.retries:
            child.attempts += 1
            child.later = True
            return
        del self.children[cid]
        self.host.apply_effects([delivery(child, outcome, info, frames)])

    # --- connections to other workers ----------------------------------------------------------

    def sockets(self) -> list[zmq.Socket[Any]]:
        return [s for _, t in self._used() for s in (t.sock, t.monitor) if s is not None]

    def on_readable(self, sock: zmq.Socket[Any], now: float) -> None:
        for main, target in self._used():
            if sock is target.monitor:
                self._on_monitor(main, target, now)
                return
            if sock is target.sock:
                self._drain(main, target, now)
                return

    def _connect(self, main: bytes, target: Target, now: float) -> None:
        hello = self.host.hello(main)
        if hello is None or self.key is None:
            return
        try:
            target.endpoint = endpoint(target.address)
            target.connect(now, hello)
        except (ConfigError, zmq.ZMQError) as exc:  # (an address or key its Main named that
            # ZeroMQ refuses)
            self._lose(main, target, f"cannot be reached: {exc}", now, refused=True)

    def _drain(self, main: bytes, target: Target, now: float) -> None:
        while target.sock is not None:
            try:
                frames = target.receive(now)
                if frames is None:
                    continue
                message = _codec.decode(frames)
            except zmq.Again:
                return
            except Exception as exc:  # (a worker we chose to trust; still, say so and go on)
                log.warning("dropped a malformed message from worker %s: %s", target.address,
                            exc)
                continue
            target.last_seen = now
            self._on_message(main, target, message, now)

    def _on_message(self, main: bytes, target: Target, msg: m.Message, now: float) -> None:
        if isinstance(msg, m.Welcome):
            target.state, target.since, target.name = LinkState.READY, now, msg.name
            target.platform, target.offered = msg.platform, msg.slots
            if msg.environment:
                self._lose(main, target, f"cannot run this Main's tasks: {msg.environment}",
                           now)
            else:
                log.info("sending calls of Main %s to worker %s directly", main.hex()[:8],
                         msg.name)
        elif isinstance(msg, m.Results):
            for spec, payload in join_payloads(msg.results, msg.frames):
                child = self.children.get(spec.task_id)
                if child is not None and child.at == target.address:
                    self.outcome(spec.task_id, spec.status, spec.info, payload)
        elif isinstance(msg, m.WorkerState):
            target.paused = msg.state != "serving"
            if msg.slots > 0:
                target.offered = msg.slots
        elif isinstance(msg, m.Waiting):
            target.stuck = msg.stuck
        elif isinstance(msg, m.Refused):
            self._lose(main, target, f"refused: {msg.reason}", now,
                       refused=msg.code is RefusalCode.NOT_DELEGATE)
        elif isinstance(msg, (m.NeedManifest, m.NeedBlobs)) and msg.dist not in self._dists_of(
                main):  # (only the workspace of this Main's calls)
            target.send(m.DistFailed(msg.dist, f"worker {self.name} sends no calls of it"))
        elif isinstance(msg, m.NeedManifest):
            data = self.host.manifest(msg.dist)
            target.send(m.Manifest(msg.dist, frames=(data,)) if data is not None else
                        m.DistFailed(msg.dist, f"worker {self.name} does not hold it"))
        elif isinstance(msg, m.NeedBlobs):
            self._ship(target, msg)

    def _dists_of(self, main: bytes) -> set[str]:
        hello = self.host.hello(main)
        return {c.dist for c in self.children.values() if c.main == main} | (
            {hello.dist} if hello is not None else set())

    def _ship(self, target: Target, need: m.NeedBlobs) -> None:
        def read(digest: str) -> bytes | str:
            data = self.host.blob(need.dist, digest)
            return data if data is not None else (
                f"worker {self.name} does not hold file {digest[:12]} of it")

        for reply in blob_batches(need.dist, need.hashes, read):
            target.send(reply)

    def _on_monitor(self, main: bytes, target: Target, now: float) -> None:
        try:
            event = target.event(zmq.NOBLOCK)
        except zmq.Again:
            return
        if event is MonitorEvent.CONNECTED:
            return
        if event is MonitorEvent.DISCONNECTED:
            if target.state is LinkState.READY:
                self._lose(main, target, "closed the connection", now)
        elif event is MonitorEvent.KEY_REFUSED:
            self._lose(main, target, "does not authorize this worker's key "
                       f"{self.key.public if self.key else ''}", now, refused=True)
        elif event is MonitorEvent.HANDSHAKE_TIMEOUT:
            self._lose(main, target, "did not finish the handshake in "
                       f"{target.handshake_seconds():.0f} s", now)
        else:
            self._lose(main, target, "did not prove the key its Main named", now,
                       refused=True)

    def _lose(self, main: bytes, target: Target, why: str, now: float,
              refused: bool = False) -> None:
        """The target cannot take calls now: the calls there are placed again."""
        if target.reason != why:
            log.warning("worker %s (%s) %s: its Main's calls go elsewhere", target.name or
                        target.address, target.address, why)
        target.down(LinkState.REFUSED if refused else LinkState.LOST, now, why)
        for child in self.children.values():
            if child.main == main and child.at == target.address:
                child.attempts += 0 if refused else 1  # (it may have run: as a lost worker)
                child.later = True

    def _drop_target(self, main: bytes, target: Target, why: str) -> None:
        self._lose(main, target, why, time.monotonic())
        del self.links[main][target.address]

    # --- time ---------------------------------------------------------------------------------

    def tick(self, now: float, stuck_here: bool) -> None:
        """Heartbeats and silence; calls handed back placed again; parents that ended cancel
        their calls; calls that can never start fail (``NestedDeadlock``)."""
        for main, target in self._used():
            check = target.check(now, self.policy)
            if check is LinkCheck.LOSE:
                self._lose(main, target, f"was silent for {self.lost_after:.0f} s", now)
            elif check is LinkCheck.HEARTBEAT:
                target.send(m.Heartbeat())
        for main, relayed in self.relayed.items():
            for ex_id, run_id, number in [r for r in relayed if not self.host.runs(r[0], r[1])]:
                parent = relayed.pop((ex_id, run_id, number))
                if parent >= FIRST_ID:  # (the Main cannot know that this parent ended)
                    self.host.apply_effects([Tell(main, m.CancelChild(parent, number))])
        for child in list(self.children.values()):
            if not self.host.runs(child.ex_id, child.run_id):
                self._cancel(child)
            elif child.later:
                action = self._place(child, now)
                if isinstance(action, (RunHere, SendTo)):
                    self._apply(action)
                elif isinstance(action, (Deliver, Relay)):  # (lost too often; or handed
                    # back, and the Main may have room elsewhere)
                    del self.children[child.cid]
                    self.host.apply_effects([action])
        self._check_deadlock(now, stuck_here)

    def _check_deadlock(self, now: float, stuck_here: bool) -> None:
        """Fail the calls of the Mains that no worker reachable directly can serve, while
        every slot here is held by a waiting task."""
        mains = {c.main for c in self.children.values()}
        if mains:  # (children are of Mains that place here: only their links can serve)
            mains -= {main for main, t in self._used()
                      if t.state is LinkState.READY and not t.stuck and not t.paused}
        if not self._deadlock.check(stuck_here and bool(mains), now):
            return
        for child in list(self.children.values()):
            if child.main not in mains or (child.at == "" and not child.later
                                           and self.host.running_here(child.cid)):
                continue
            self._cancel(child)
            error = NestedDeadlock.of(
                f"task {child.name}#{child.label}, {child.chain}", f"worker {self.name}"
                f"{' and the workers it sends calls to' if any(self.links.values()) else ''}")
            log.warning("%s", error)
            self.host.apply_effects([Deliver(child, "error", ErrorRecord.of(error, False).to_wire(),
                                     [])])

    def close(self) -> None:
        for links in self.links.values():
            for target in links.values():
                target.close()
        self.links.clear()
        self.placing.clear()

    def status(self) -> dict[str, Any]:
        return {"direct_" + k: v for k, v in self.placed.items()} | {
            "direct_targets": sorted({f"{t.name or t.address}: {t.state.value}"
                                      for t in self.targets.values()})}

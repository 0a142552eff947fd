"""Calls made inside tasks that this worker places itself (``redistribution`` "direct", or
"auto" where it can): run here, or sent to another worker of the same Main, never through
the Main.

The Main's ``Peers`` names its other workers. To send one a call, this worker connects to it
with its own key, saying Hello as the Main's *delegate*; the other worker takes it only if the
Main's own ``Peers`` there names this worker's key (the owner also lists it in that worker's
authorized keys), and counts the call under that Main for fair share and quotas. A target
that lacks the Main's workspace fetches it from this worker's store.

Each call is a ``Child`` here until its outcome goes to its parent's executor: crashes are
retried per its ``retries``, calls handed back (``DEFERRED``) or on a worker that was lost
are placed again, and a parent that ends (or moves, or whose Main leaves) cancels its calls
wherever they are. The Main hears of each placement (``Placed``).
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from distrib._config import endpoint
from distrib._errors import ConfigError, NestedDeadlock
from distrib._sustained import Sustained
from distrib.wire import _codec, _transport
from distrib.wire import _messages as m
from distrib.wire._keys import KeyPair
from distrib.wire._limits import BLOB_BATCH_BYTES, MAX_MESSAGE_BYTES
from distrib.wire._messages import Outcome, RefusalCode
from distrib.wire._record import ErrorRecord

log = logging.getLogger("distrib.worker")

LOCAL = b"\x00direct"  # ``QueuedTask.reply`` of a call placed here: its outcome goes to Direct
FIRST_ID = m.WORKER_IDS  # ids this worker gives the calls it places or takes for a Main
RETRY_AFTER = 3.0  # seconds before a worker that refused (or was lost) is tried again
DEADLOCK_AFTER = 2.0  # seconds every reachable slot is held by waiting tasks before calls fail

_WATCHED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_DISCONNECTED)


@dataclass(eq=False)
class Child:
    """A call placed by this worker, until its outcome reaches its parent."""

    cid: int  # this worker's id for it (the task id wherever it runs)
    main: bytes  # the Main it is counted under (its peer here)
    ex_id: int  # the parent's executor
    key: int  # the parent's run there
    parent: int  # the parent's task id here (the Main's own below ``FIRST_ID``)
    number: int  # the parent's number for it
    name: str
    label: str  # "<parent's label>.<number>", as errors name it: leaf#1.3 is task 1's call 3
    chain: str  # "called by <parent>#<label>, called by ..."
    platforms: tuple[str, ...]
    threads: int
    retries: int
    timeout: float | None
    dist: str
    depth: int
    frames: list[Any] = field(repr=False)
    mode: str = "direct"  # or "auto": it may still go through the Main
    attempts: int = 0  # runs that crashed or were lost with their worker
    at: str = ""  # "" here, else the address of the worker it went to
    later: bool = False  # handed back: placed again at the next tick


@dataclass(eq=False)
class Target:
    """Another worker of a Main, as this worker sends it that Main's calls."""

    address: str
    key: str
    name: str
    state: str = "new"  # "connecting", "ready", "refused", "lost"
    sock: zmq.Socket[Any] | None = None
    monitor: zmq.Socket[Any] | None = None
    since: float = 0.0
    last_seen: float = 0.0
    platform: str = ""
    offered: int = 0
    paused: bool = False
    stuck: bool = False
    why: str = ""

    def send(self, message: m.Message) -> None:
        if self.sock is not None:
            try:
                _transport.send(self.sock, message, max_frame=MAX_MESSAGE_BYTES)
            except zmq.ZMQError as exc:
                log.debug("could not send %s to %s: %s", type(message).__name__, self.address,
                          exc)

    def close(self) -> None:
        _transport.close_monitored(self.sock, self.monitor)
        self.sock = self.monitor = None


@dataclass
class Host:
    """What Direct needs of its daemon."""

    name: str
    platform: str
    ctx: zmq.Context[Any]
    key: KeyPair | None
    lost_after: float
    hello: Callable[[bytes], m.Hello | None]  # a Main's Hello as its delegate says it
    run_here: Callable[[Child], None]  # queue a call here (as ``QueuedTask.reply`` LOCAL)
    cancel_here: Callable[[Child], None]
    is_running: Callable[[Child], bool]  # a call placed here runs now (not queued)
    load_here: Callable[[], float]  # busy-or-queued slots per slot here
    lends_here: Callable[[bytes, int], bool]  # this worker takes the Main's tasks of so many
    # threads now (it is lending, and its quota allows)
    deliver: Callable[[Child, str, dict[str, str], list[Any]], None]  # an outcome to its parent
    relay: Callable[[Child], None]  # send it through its Main after all
    runs: Callable[[int, int], bool]  # executor ``ex_id`` still runs its task ``key``
    to_main: Callable[[bytes, m.Message], None]
    manifest: Callable[[str], bytes | None]  # a distribution's manifest, if it is here
    blob: Callable[[str, str], bytes | None]  # a blob of a distribution here, if it is


class Direct:
    """The calls this worker places itself, and its connections to other workers for them."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.ids = itertools.count(FIRST_ID)
        self.children: dict[int, Child] = {}
        self.peers: dict[bytes, list[list[Any]]] = {}  # per Main: its Peers, as sent
        self.targets: dict[tuple[bytes, str], Target] = {}  # (Main, address) -> connection
        self.relayed: dict[bytes, dict[tuple[int, int, int], int]] = {}  # per Main: calls
        # relayed and not answered yet: (executor, run, number) -> the parent's id
        self.placed = {"here": 0, "sent": 0, "relayed": 0}  # counters for status
        self._deadlock = Sustained(DEADLOCK_AFTER)

    # --- the Main's word -----------------------------------------------------------------------

    def set_peers(self, main: bytes, workers: list[list[Any]], now: float) -> None:
        """The Main's other workers: connections to ones gone are closed, new ones opened
        when a call first needs them."""
        self.peers[main] = workers
        listed = {str(w[0]) for w in workers}
        for (peer, address), target in list(self.targets.items()):
            if peer == main and address not in listed:
                self._drop_target(main, target, "is no longer one of its Main's workers")
        for address, key, name, _ in workers:
            known = self.targets.get((main, address))
            if known is not None:
                known.name = name or known.name
            elif key and self.host.key is not None:
                self.targets[(main, address)] = Target(address, key, name)

    def main_left(self, main: bytes) -> None:
        """The Main was dropped here: its calls' parents are stopped; its connections go."""
        for child in [c for c in self.children.values() if c.main == main]:
            self._cancel(child)
        for (peer, _), target in list(self.targets.items()):
            if peer == main:
                target.close()
                del self.targets[(peer, target.address)]
        self.peers.pop(main, None)
        self.relayed.pop(main, None)

    # --- calls ------------------------------------------------------------------------------

    @staticmethod
    def mode(asked: str, main_default: str, outputs: bool) -> str:
        """How a call goes: "relayed", "direct" or "auto". A call whose function sends files
        back (``outputs``) goes through the Main, which writes them."""
        return "relayed" if outputs else asked or main_default or "auto"

    def place(self, child: Child, now: float) -> bool:
        """Place a call: False if it should go through its Main instead (``auto``, no free
        slot here or on the workers reachable directly, and the Main has others)."""
        where = self._choose(child, child.mode, now)
        if where is None:
            return False
        self.children[child.cid] = child
        self._send_to(child, where)
        self.host.to_main(child.main, m.Placed(
            child.parent, child.number, child.name,
            self.host.name if where == "" else self.targets[(child.main, where)].name))
        return True

    def relay(self, main: bytes, ex_id: int, key: int, number: int, parent: int) -> None:
        """A call went through its Main (counted, to weigh the Main against this worker and
        the ones reachable directly)."""
        self.placed["relayed"] += 1
        self.relayed.setdefault(main, {})[(ex_id, key, number)] = parent

    def relay_answered(self, main: bytes, ex_id: int, key: int, number: int) -> None:
        self.relayed.get(main, {}).pop((ex_id, key, number), None)

    def _choose(self, child: Child, mode: str, now: float) -> str | None:
        """"" for here, a target's address, or None for the Main."""
        fits = _matches(self.host.platform, child.platforms) and self.host.lends_here(
            child.main, child.threads)
        best, best_load = ("" if fits else None), (self.host.load_here() if fits else 1e9)
        for (main, address), target in self.targets.items():
            if main != child.main:
                continue
            if target.state in ("new",) or (target.state in ("refused", "lost")
                                              and now - target.since > RETRY_AFTER):
                self._connect(main, target, now)
            if (target.state != "ready" or target.paused or target.stuck
                    or target.offered < child.threads
                    or not _matches(target.platform, child.platforms)):
                continue
            load = self._sent_to(main, address) / target.offered
            if load < best_load:
                best, best_load = address, load
        if best is not None and best_load < 1:
            return best  # (a free slot here or where this worker sends calls directly)
        if best is None or (mode == "auto" and self._relay_slots(child.main)):
            return None  # (the Main may have room elsewhere; or only it can place this call)
        return best  # (queued where the fewest wait)

    def _relay_slots(self, main: bytes) -> int:
        """Slots of the Main's other workers this one cannot send calls to itself (all of
        them, while its ``Peers`` are not heard)."""
        others = self.peers.get(main)
        if others is None:
            return 1
        ready = {a for (m_, a), t in self.targets.items() if m_ == main and t.state == "ready"}
        return sum(int(w[3]) for w in others if w[0] not in ready)

    def _sent_to(self, main: bytes, address: str) -> int:
        return sum(c.threads for c in self.children.values() if c.main == main and c.at ==
                   address)

    def _send_to(self, child: Child, where: str) -> None:
        child.at, child.later = where, False
        if where == "":
            self.placed["here"] += 1
            self.host.run_here(child)
            return
        self.placed["sent"] += 1
        target = self.targets[(child.main, where)]
        inline, frames = m.split_payload(child.frames)
        target.send(m.Submit([m.TaskSpec(child.cid, child.dist, child.threads, child.timeout,
                                         child.attempts, inline, len(frames),
                                         depth=child.depth)], frames=tuple(frames)))

    def cancel(self, ex_id: int, key: int, number: int) -> bool:
        """The parent cancelled its call ``number``: whether it was one placed here."""
        for child in self.children.values():
            if child.ex_id == ex_id and child.key == key and child.number == number:
                self._cancel(child)
                return True
        return False

    def _cancel(self, child: Child) -> None:
        self.children.pop(child.cid, None)
        if child.later:
            return
        if child.at == "":
            self.host.cancel_here(child)
        elif (target := self.targets.get((child.main, child.at))) is not None:
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
        where = f"{child.name}#{child.label}"
        if outcome is Outcome.OK:
            self.host.deliver(child, "ok", {}, frames)
        elif outcome in (Outcome.ERROR, Outcome.ENV_ERROR):
            self.host.deliver(child, "error", info, frames)
        elif outcome is Outcome.CRASHED:
            self.host.deliver(child, "error", ErrorRecord(
                "distrib.WorkerCrashed", f"{where} crashed: {ErrorRecord.from_wire(info).message}"
                f"; tried {child.attempts + 1} time(s), retries={child.retries}").to_wire(), [])
        elif outcome is Outcome.TIMEOUT:
            self.host.deliver(child, "error", ErrorRecord(
                "distrib.TaskTimeout", f"{where} ran past its timeout of {child.timeout} s and "
                "was stopped").to_wire(), [])
        else:
            self.host.deliver(child, "error", ErrorRecord(
                "distrib.Cancelled", f"{where} was cancelled").to_wire(), [])

    # --- connections to other workers ----------------------------------------------------------

    def sockets(self) -> list[zmq.Socket[Any]]:
        return [s for t in self.targets.values() for s in (t.sock, t.monitor) if s is not None]

    def on_readable(self, sock: zmq.Socket[Any], now: float) -> None:
        for (main, _), target in list(self.targets.items()):
            if sock is target.monitor:
                self._on_monitor(main, target, now)
                return
            if sock is target.sock:
                self._drain(main, target, now)
                return

    def _connect(self, main: bytes, target: Target, now: float) -> None:
        hello = self.host.hello(main)
        if hello is None or self.host.key is None:
            return
        target.close()
        target.state, target.since, target.last_seen = "connecting", now, now
        try:
            target.sock = _transport.dealer(self.host.ctx, endpoint(target.address), target.key,
                                            self.host.key)
            target.monitor = target.sock.get_monitor_socket(_WATCHED)
        except (ConfigError, zmq.ZMQError) as exc:  # (an address or key its Main named that
            # ZeroMQ refuses)
            self._lose(main, target, f"cannot be reached: {exc}", now, refused=True)
            return
        target.send(hello)

    def _drain(self, main: bytes, target: Target, now: float) -> None:
        while target.sock is not None:
            try:
                frames = _transport.recv_frames(target.sock)
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
            target.state, target.since, target.name = "ready", now, msg.name
            target.platform, target.offered = msg.platform, msg.slots
            if msg.environment:
                self._lose(main, target, f"cannot run this Main's tasks: {msg.environment}",
                           now)
            else:
                log.info("sending calls of Main %s to worker %s directly", main.hex()[:8],
                         msg.name)
        elif isinstance(msg, m.Results):
            at = 0
            for spec in msg.results:
                payload = [*spec.inline, *msg.frames[at:at + spec.nframes]]
                at += spec.nframes
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
            target.send(m.DistFailed(msg.dist, f"worker {self.host.name} sends no calls of it"))
        elif isinstance(msg, m.NeedManifest):
            data = self.host.manifest(msg.dist)
            target.send(m.Manifest(msg.dist, frames=(data,)) if data is not None else
                        m.DistFailed(msg.dist, f"worker {self.host.name} does not hold it"))
        elif isinstance(msg, m.NeedBlobs):
            self._ship(target, msg)

    def _dists_of(self, main: bytes) -> set[str]:
        hello = self.host.hello(main)
        return {c.dist for c in self.children.values() if c.main == main} | (
            {hello.dist} if hello is not None else set())

    def _ship(self, target: Target, need: m.NeedBlobs) -> None:
        hashes: list[str] = []
        packed: list[bytes] = []
        size = 0
        for digest in need.hashes:
            data = self.host.blob(need.dist, digest)
            if data is None:
                target.send(m.DistFailed(need.dist, f"worker {self.host.name} does not hold "
                                                    f"file {digest[:12]} of it"))
                return
            hashes.append(digest)
            packed.append(zlib.compress(data, 1))
            size += len(packed[-1])
            if size >= BLOB_BATCH_BYTES:
                target.send(m.Blobs(need.dist, hashes, frames=tuple(packed)))
                hashes, packed, size = [], [], 0
        if hashes:
            target.send(m.Blobs(need.dist, hashes, frames=tuple(packed)))

    def _on_monitor(self, main: bytes, target: Target, now: float) -> None:
        assert target.monitor is not None
        try:
            event = _transport.monitor_event(target.monitor, zmq.NOBLOCK)
        except zmq.Again:
            return
        if event["event"] == zmq.EVENT_DISCONNECTED:
            if target.state == "ready":
                self._lose(main, target, "closed the connection", now)
        elif event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._lose(main, target, "does not authorize this worker's key "
                       f"{self.host.key.public if self.host.key else ''}", now, refused=True)
        else:
            self._lose(main, target, "did not prove the key its Main named", now,
                       refused=True)

    def _lose(self, main: bytes, target: Target, why: str, now: float,
              refused: bool = False) -> None:
        """The target cannot take calls now: the calls there are placed again."""
        if target.why != why:
            log.warning("worker %s (%s) %s: its Main's calls go elsewhere", target.name or
                        target.address, target.address, why)
        target.close()
        target.state, target.since, target.why = ("refused" if refused else "lost"), now, why
        for child in self.children.values():
            if child.main == main and child.at == target.address:
                child.attempts += 0 if refused else 1  # (it may have run: as a lost worker)
                child.later = True

    def _drop_target(self, main: bytes, target: Target, why: str) -> None:
        self._lose(main, target, why, time.monotonic())
        del self.targets[(main, target.address)]

    # --- time ---------------------------------------------------------------------------------

    def tick(self, now: float, stuck_here: bool) -> None:
        """Heartbeats and silence; calls handed back placed again; parents that ended cancel
        their calls; calls that can never start fail (``NestedDeadlock``)."""
        for (main, _), target in list(self.targets.items()):
            if target.state in ("connecting", "ready"):
                if now - target.last_seen > self.host.lost_after:
                    self._lose(main, target, f"was silent for {self.host.lost_after:.0f} s", now)
                else:
                    target.send(m.Heartbeat())
        for main, relayed in self.relayed.items():
            for ex_id, key, number in [r for r in relayed if not self.host.runs(r[0], r[1])]:
                parent = relayed.pop((ex_id, key, number))
                if parent >= FIRST_ID:  # (the Main cannot know that this parent ended)
                    self.host.to_main(main, m.CancelChild(parent, number))
        for child in list(self.children.values()):
            if not self.host.runs(child.ex_id, child.key):
                self._cancel(child)
            elif child.later:
                if child.attempts > child.retries:
                    del self.children[child.cid]
                    self.host.deliver(child, "error", ErrorRecord(
                        "distrib.WorkerLost", f"{child.name}#{child.label} was on worker(s) that "
                        f"were lost; tried {child.attempts} time(s)").to_wire(), [])
                elif (where := self._choose(child, child.mode, now)) is not None:
                    self._send_to(child, where)
                else:  # (handed back, and the Main may have room elsewhere)
                    del self.children[child.cid]
                    self.host.relay(child)
        self._check_deadlock(now, stuck_here)

    def _check_deadlock(self, now: float, stuck_here: bool) -> None:
        """Fail the calls of the Mains that no worker reachable directly can serve, while
        every slot here is held by a waiting task."""
        served = {main for (main, _), t in self.targets.items()
                  if t.state == "ready" and not t.stuck and not t.paused}
        mains = {c.main for c in self.children.values()} - served
        if not self._deadlock.check(stuck_here and bool(mains), now):
            return
        for child in list(self.children.values()):
            if child.main not in mains or (child.at == "" and not child.later
                                           and self.host.is_running(child)):
                continue
            self._cancel(child)
            error = NestedDeadlock.of(
                f"task {child.name}#{child.label}, {child.chain}", f"worker {self.host.name}"
                f"{' and the workers it sends calls to' if self.targets else ''}")
            log.warning("%s", error)
            self.host.deliver(child, "error", ErrorRecord.of(error, False).to_wire(), [])

    def close(self) -> None:
        for target in self.targets.values():
            target.close()
        self.targets.clear()

    def status(self) -> dict[str, Any]:
        return {"direct_" + k: v for k, v in self.placed.items()} | {
            "direct_targets": sorted({f"{t.name or t.address}: {t.state}"
                                      for t in self.targets.values()})}


def _matches(platform: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(platform, g) for g in globs)


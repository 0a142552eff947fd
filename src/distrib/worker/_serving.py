"""Serving Mains: their messages decoded and checked, Hello and Welcome (a Main's, or another
worker's as a Main's delegate), ``Peers``, what they submit, cancel and send (turned into the
core's events and calls on ``Supply``), and a Main dropped (it left, went silent or broke the
protocol).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq

from distrib import _shm
from distrib._errors import ProtocolError
from distrib._logs import RateLimited
from distrib._process import exists
from distrib.wire import _codec, _envspec, _facts, _keys
from distrib.wire import _messages as m
from distrib.wire._carry import Carried
from distrib.wire._limits import MAX_MESSAGE_BYTES, OUTPUT_CHUNK
from distrib.wire._messages import Outcome, RefusalCode
from distrib.wire._record import ErrorRecord
from distrib.wire._payload import join_payloads
from distrib.worker._backlog import Backlog
from distrib.worker._core import Core
from distrib.worker._direct import FIRST_ID
from distrib.worker._events import (
    Action,
    Admit,
    CancelAsked,
    EnvReady,
    GaveBack,
    MainDropped,
    MainLeft,
    QuotaSet,
    RevokeAsked,
    TaskQueued,
    TaskSubmitted,
)
from distrib.worker._gate import Gate
from distrib.worker._mains import MainPeer, Mains
from distrib.worker._memory import MemoryWatch
from distrib.worker._outbox import Outbox
from distrib.worker._owner import SERVING, OwnerState
from distrib.worker._redistribution import Calls
from distrib.worker._state import QueuedTask
from distrib.worker._supply import Report, Supply

log = logging.getLogger("distrib.worker")
peer_log = RateLimited(log)  # for what a remote peer (or task code) can trigger

_PEER_ADDRESS = re.compile(r"(tcp://)?[A-Za-z0-9.\-]{1,253}:[0-9]{1,5}")  # (as Mains name them)


def key_account(key: str) -> bytes:
    """The core's account of a Main with public key ``key``: every Main of one key counts in
    it together (quotas, fair share, queued bytes, shared objects); ``b""`` for a Main without
    a key, which counts alone."""
    return b"key " + key.encode() if key else b""


class Serving:
    """The Mains this worker serves (and the workers that send it their calls)."""

    def __init__(self, name: str, worker_id: str, keyed: bool, mains: Mains, core: Core,
                 gate: Gate, owner: OwnerState, memory: MemoryWatch, supply: Supply,
                 calls: Calls, outbox: Outbox, send: Callable[[bytes, m.Message], None],
                 apply: Callable[[list[Action]], None], report: Report) -> None:
        self.name = name
        self.worker_id = worker_id
        self.keyed = keyed  # Mains connect with keys (ZAP names each one's)
        self.mains = mains
        self.core = core
        self.gate = gate
        self.owner = owner
        self.memory = memory
        self.supply = supply
        self.calls = calls
        self.outbox = outbox
        self.send = send
        self.apply = apply
        self.report = report
        self.status: Callable[[], dict[str, Any]] = dict  # (set once the daemon is built)
        self.delegated: dict[tuple[bytes, int], int] = {}  # (a worker's connection, its id
        # for a call) -> this worker's id for it
        self.quiet_fds: set[int] = set()  # connections of a Goodbye or a status query
        self.shm_sweep: set[int] = set()  # Mains (pids) that left: remove their /dev/shm files
        self.dropped = 0  # malformed messages
        self.carried = Carried()  # payload frames Mains sent ahead of their messages
        self.backlog = Backlog(lambda peer: (None, None))  # (the daemon's, set once built)
        # Output of tasks not sent to their congested Main, in characters, by (Main, task,
        # stream): it is told how much when it takes messages again.
        self._unsent_output: Counter[tuple[bytes, int, int]] = Counter()
        self.reruns = 0  # tasks run again here after a crash or a lost worker (at least once)

    def on_frames(self, frames: list[Any]) -> None:
        """One message read from the ROUTER: decoded, checked, and served."""
        self.receive(frames[0].bytes, frames[1:])

    def receive(self, peer: bytes, frames: list[Any], key: str | None = None) -> None:
        """One message from ``peer``: decoded, checked, and served. ``key``: the public key of
        a Main this worker dialled (it proved it); None for a message read from the ROUTER,
        whose frames name their key and connection."""
        try:
            whole = self.carried.take(frames, peer)
            if whole is None:  # (the rest of its message is on its way: the Main is alive)
                self._carried(peer)
                return
            message = _codec.decode(whole)
        except ProtocolError as exc:
            self.dropped += 1
            main = self.mains.get(peer)
            peer_log.warning("dropped a malformed message from %s: %s",
                             f"Main {main.name}" if main else f"peer {peer.hex()[:8]}", exc)
            if main is not None:  # a peer that breaks the protocol is not trusted further
                self.drop_main(peer, "broke the protocol")
                self.send(peer, m.Refused(RefusalCode.MALFORMED,
                                          "malformed message; say Hello again"))
            return
        if key is not None:
            self._on_message(peer, message, key)
            return
        # (the Main's public key, as ZAP let it in: its quota is that key's)
        self._on_message(peer, message, frames[0].get("User-Id") if self.keyed else "")
        main = self.mains.get(peer)
        if main is not None:
            main.fd = frames[0].get(zmq.SRCFD)
        elif isinstance(message, (m.Goodbye, m.StatusRequest)):
            self.quiet_fds.add(frames[0].get(zmq.SRCFD))  # its closing is no news

    def _carried(self, peer: bytes) -> None:
        main = self.mains.get(peer)
        if main is None:  # (only a Main that said Hello may send ahead)
            self.carried.forget(peer)
        else:
            main.last_seen = time.monotonic()

    def _on_message(self, peer: bytes, msg: m.Message, key: str = "") -> None:
        if isinstance(msg, m.StatusRequest):
            try:
                self.send(peer, m.Status(self.status()))
            except Exception:  # (a question must not stop the daemon: say why, serve on)
                log.exception("could not answer a status query")
            return
        if isinstance(msg, m.Hello):
            self._on_hello(peer, msg, key)
            return
        main = self.mains.get(peer)
        if main is None and isinstance(msg, (m.Goodbye, m.Heartbeat)):
            return  # a Main already dropped (say, as its connection closed) takes its leave
        if main is None:
            peer_log.warning("dropped %s from a peer that has not said Hello", type(msg).__name__)
            self.send(peer, m.Refused(RefusalCode.UNKNOWN_PEER, "unknown peer: send Hello first"))
            return
        main.last_seen = time.monotonic()
        supply = self.supply
        if isinstance(msg, m.Ping):
            self.send(peer, m.Pong(msg.sent))
        elif isinstance(msg, m.Submit):
            self._on_submit(peer, msg)
        elif isinstance(msg, m.Cancel) and main.account:
            for task_id in msg.task_ids:
                ours = self.delegated.pop((peer, task_id), None)
                if ours is not None:
                    self.apply(self.core.handle(CancelAsked(main.account, ours), time.monotonic()))
        elif isinstance(msg, m.Cancel):
            for task_id in msg.task_ids:
                self.apply(self.core.handle(CancelAsked(peer, task_id), time.monotonic()))
        elif isinstance(msg, m.Revoke):
            self._on_revoke(peer, msg, bool(main.account))
        elif isinstance(msg, m.Manifest):
            supply.on_change(supply.dists.on_manifest(msg))
        elif isinstance(msg, m.Blobs) and supply.envs.building(msg.dist):
            supply.on_wheels(peer, msg)
        elif isinstance(msg, m.Blobs):
            supply.on_change(supply.dists.on_blobs(msg))
        elif isinstance(msg, m.DistFailed) and supply.envs.building(msg.dist):
            supply.reject_wheels(msg.dist, peer, msg.reason)
        elif isinstance(msg, m.DistFailed):
            supply.on_change(supply.dists.on_failed(peer, msg))
        elif isinstance(msg, m.ChildResult):
            self.calls.on_child_result(peer, msg)
        elif isinstance(msg, m.Peers):
            self._on_peers(main, msg)
        elif isinstance(msg, m.Objects):
            supply.on_objects(peer, msg)
        elif isinstance(msg, m.ObjectsFailed):
            supply.objects_failed(peer, msg.names, msg.reason)
        elif isinstance(msg, m.Goodbye):
            self.drop_main(peer, "said goodbye")
        elif not isinstance(msg, m.Heartbeat):
            peer_log.warning("dropped unexpected %s from Main %s", type(msg).__name__, main.name)

    def _on_revoke(self, peer: bytes, msg: m.Revoke, delegate: bool) -> None:
        """Give back the tasks not started; say which (a delegate's calls stay: they are
        this worker's own)."""
        if delegate:
            self.send(peer, m.Revoked([], list(msg.task_ids)))
            return
        actions = self.core.handle(RevokeAsked(peer, tuple(msg.task_ids)), time.monotonic())
        answer = next(a for a in actions if isinstance(a, GaveBack))
        self.send(peer, m.Revoked(answer.given, answer.kept))
        self.apply([a for a in actions if a is not answer])

    def _on_hello(self, peer: bytes, msg: m.Hello, key: str) -> None:
        if msg.protocol != m.PROTOCOL_VERSION:
            peer_log.warning("refused Main %s: protocol %d, this worker speaks %d",
                             msg.name, msg.protocol, m.PROTOCOL_VERSION)
            self.send(peer, m.Refused(RefusalCode.PROTOCOL, f"protocol {msg.protocol} "
                                      f"unsupported; this worker speaks {m.PROTOCOL_VERSION}"))
            return
        known = self.mains.get(peer)
        if known is not None and (known.account or msg.delegate):  # (a Main turned delegate,
            self.drop_main(peer, "said Hello again")  # or the other way: it starts over)
        if msg.delegate:
            self._on_delegate_hello(peer, msg, key)
            return
        try:
            spec = _envspec.decode(msg.environment)
        except ProtocolError as exc:
            peer_log.warning("refused Main %s: %s", msg.name, exc)
            self.send(peer, m.Refused(RefusalCode.PROTOCOL, str(exc)))
            return
        envs = self.supply.envs
        env, problem = envs.plan(spec)
        if env:
            self.supply.specs[env] = spec
            if not problem and envs.ready(env):
                envs.used(env)
                self.apply(self.core.handle(EnvReady(env), time.monotonic()))
        shm = len(msg.shm_probe) == 2 and _shm.check_probe(msg.shm_probe[0], msg.shm_probe[1],
                                                            msg.pid)
        main = self.mains.welcome(peer, msg, time.monotonic(), env, problem, shm, key)
        if shm:
            self.supply.objects.shares_memory(peer)
        quota = self.gate.quota(key)
        self.apply(self.core.handle(QuotaSet(peer, quota.slots, quota.priority,
                                             key_account(key)), time.monotonic()))
        peer_log.info("serving Main %s (pid %d)%s%s", msg.name, msg.pid,
                      f", {quota}" if str(quota) else "",
                      f"; it cannot run here: {problem}" if problem else "")
        self._welcome(main, problem, shm)
        if msg.dist and msg.warm > 0:
            self.supply.warm(main, msg.dist, msg.warm, self.owner.effective()[0] == SERVING)

    def _welcome(self, main: MainPeer, problem: str, shm: bool) -> None:
        self.send(main.peer, m.Welcome(m.PROTOCOL_VERSION, self.worker_id, self.name,
                                       _facts.platform_tag(), _facts.python_version(),
                                       self.core.offered(main.account or main.peer),
                                       os.getpid(), self.supply.envs.versions(), problem,
                                       MAX_MESSAGE_BYTES, shm, self.memory.per_task or 0))
        if self.owner.effective()[0] != SERVING:
            self.send(main.peer, self.worker_state(main.peer))

    def _on_delegate_hello(self, peer: bytes, msg: m.Hello, key: str) -> None:
        """Another worker sends calls of a Main's tasks here: taken only if that Main's own
        ``Peers`` here name the key it connected with. Its calls count under that Main."""
        account = next((x for x in self.mains.values() if x.key and x.key == msg.delegate
                        and x.main_id == msg.main_id and not x.account), None)
        if account is None or account.hello is None or not key or key not in account.delegates:
            why = ("its Main is not served here" if account is None else
                   f"its Main does not name its key {key or '(none)'} among its workers")
            peer_log.warning("refused calls from %s: %s", msg.name, why)
            self.send(peer, m.Refused(RefusalCode.NOT_DELEGATE, f"worker {self.name} takes "
                                      f"no calls from {msg.name}: {why}"))
            return
        main = self.mains.welcome(peer, account.hello, time.monotonic(), account.env,
                                  account.env_problem, False, key)
        main.account, main.name, main.forward_output = account.peer, msg.name, False
        peer_log.info("taking calls of Main %s from %s", account.name, msg.name)
        self._welcome(main, account.env_problem, False)

    def _on_peers(self, main: MainPeer, msg: m.Peers) -> None:
        """The Main's other workers: where its tasks' calls may go, and who may send them
        here."""
        if main.account:
            return  # (a worker's connection names no peers)
        workers = [w for w in msg.workers[:256] if len(w) == 4 and all(
            isinstance(x, str) and len(x) < 512 for x in w[:3])
            and _PEER_ADDRESS.fullmatch(w[0]) and (w[1] == "" or _keys.is_public(w[1]))
            and isinstance(w[3], int) and not isinstance(w[3], bool) and 0 <= w[3] < 1 << 20]
        main.delegates = {w[1] for w in workers if w[1]}
        for other in [x for x in self.mains.values() if x.account == main.peer
                      and x.key not in main.delegates]:
            self.send(other.peer, m.Refused(RefusalCode.NOT_DELEGATE, "its Main no longer "
                                            "names it among its workers"))
            self.drop_main(other.peer, "is no longer named by its Main")
        self.calls.direct.set_peers(main.peer, workers, time.monotonic())

    def _on_submit(self, peer: bytes, msg: m.Submit) -> None:
        sender = self.mains[peer]
        main = self.mains.get(sender.account) if sender.account else sender
        if main is None:
            return  # (dropped with it)
        for spec, payload in join_payloads(msg.tasks, msg.frames):
            task = QueuedTask(main.peer, spec.task_id, spec.dist, spec.threads, spec.timeout,
                              payload, main.context, main.env, tuple(spec.objects),
                              depth=spec.depth)
            if sender.account:  # (a call sent for the Main: this worker's id for it)
                if (peer, spec.task_id) in self.delegated:
                    peer_log.warning("dropped call %d from %s: that id is in use", spec.task_id,
                                     sender.name)
                    continue
                task.task_id, task.reply = next(self.calls.direct.ids), peer
                task.reply_id = spec.task_id
                self.delegated[(peer, spec.task_id)] = task.task_id
            elif spec.task_id >= FIRST_ID:
                self.report(task, Outcome.ERROR, ErrorRecord(
                    "distrib.ProtocolError", f"task ids must be below {FIRST_ID}").to_wire(), [])
                continue
            self.reruns += spec.attempt > 0
            # (the core's checks come first: nothing is fetched for a task it will not take)
            for action in self.core.handle(TaskSubmitted(task, main.env_problem),
                                           time.monotonic()):
                if isinstance(action, Admit):
                    self._admit(action.task, spec, sender, main)
                else:
                    self.apply([action])

    def _admit(self, task: QueuedTask, spec: m.TaskSpec, sender: MainPeer,
               main: MainPeer) -> None:
        """The core takes ``task``: ask for what it needs, then queue it (unless its frames
        or shared objects cannot come here)."""
        if spec.shm and not sender.shm:
            self.report(task, Outcome.ERROR, ErrorRecord(
                "distrib.ProtocolError", f"worker {self.name} does not share this Main's "
                "/dev/shm, yet its call names frames there").to_wire(), [])
            return
        if spec.shm:
            task.shm = spec.shm
        if spec.objects and not self.supply.plan_objects(task, spec.objects):
            return
        self.supply.fetch(spec.dist, sender.peer, main)
        self.apply(self.core.handle(TaskQueued(task, admitted=True), time.monotonic()))

    def forward_output(self, ex_id: int, stream: int, text: str) -> None:
        """What a running task printed: to its Main, if it asked for it."""
        head = self.core.running(ex_id)
        main = self.mains.get(head.task.peer) if head is not None else None
        if head is not None and main is not None and main.forward_output:
            if main.peer in self.backlog.held:  # (it does not read: what a task prints may not
                # fill the worker meanwhile)
                self._unsent_output[main.peer, head.task.task_id, stream] += len(text)
                return
            for i in range(0, len(text), OUTPUT_CHUNK):
                self.send(main.peer, m.Output(head.task.task_id, stream,
                                              text[i:i + OUTPUT_CHUNK]))

    def output_dropped(self, peer: bytes) -> None:
        """``peer`` takes messages again: say what its tasks printed that it did not get."""
        for key in [k for k in self._unsent_output if k[0] == peer]:
            chars = self._unsent_output.pop(key)
            self.send(peer, m.Output(key[1], key[2], f"\n[distrib: worker {self.name} dropped "
                                     f"{chars:,} characters of this task's output: its Main "
                                     "did not read what the worker sent it]\n"))

    def worker_state(self, peer: bytes) -> m.WorkerState:
        state, why = self.owner.effective()
        main = self.mains.get(peer)
        account = main.account if main is not None and main.account else peer
        return m.WorkerState(state, self.core.offered(account), self.memory.per_task or 0, why)

    def tell_all(self) -> None:
        for peer in self.mains:
            self.send(peer, self.worker_state(peer))

    def quotas_changed(self) -> None:
        """The authorized keys were read again: each Main's quota is its key's now."""
        for peer, main in self.mains.items():
            if main.account:
                self.send(peer, self.worker_state(peer))  # (its Main's quota, as it stands)
                continue
            account = self.core.account(peer)  # (its key's, which the weights are by)
            before = self.core.offered(peer), self.core.weights.get(account, 1.0)
            quota = self.gate.quota(main.key)
            self.apply(self.core.handle(QuotaSet(peer, quota.slots, quota.priority,
                                                 key_account(main.key)), time.monotonic()))
            if (self.core.offered(peer), self.core.weights.get(account, 1.0)) != before:
                log.info("Main %s: %s", main.name, str(quota) or "no quota")
                self.send(peer, self.worker_state(peer))

    def drop_main(self, peer: bytes, why: str) -> None:
        sender = self.mains.get(peer)
        dists = self.supply.dists
        if sender is not None and sender.account:  # (its calls stop; the Main's stay)
            now = time.monotonic()
            calls = [k for k in self.delegated if k[0] == peer]
            for key in calls:
                self.apply(self.core.handle(
                    CancelAsked(sender.account, self.delegated.pop(key)), now))
            self.mains.forget(peer, {ex.key.context for ex in self.core.executors.values()})
            self._forget(peer)
            dists.source_left(peer, self.core.queues.first_peer_with)
            peer_log.info("%s %s: stopped the %d call(s) it sent here", sender.name, why,
                          len(calls))
            return
        if sender is not None:
            for other in [x.peer for x in self.mains.values() if x.account == peer]:
                self.drop_main(other, "sent calls for a Main that left")
            self.calls.direct.main_left(peer)
        # (a sandboxed Main's context names it: no later Main can use its executors)
        context = self.mains.contexts.get(sender.context) if sender is not None else None
        private = sender.context if sender is not None and context is not None \
            and context.network else ""
        actions = self.core.handle(MainLeft(peer, private), time.monotonic())
        dropped = next(a for a in actions if isinstance(a, MainDropped))
        self.apply(actions)
        self.supply.warming.forget(peer)
        main = self.mains.forget(peer, {ex.key.context for ex in self.core.executors.values()})
        self._forget(peer)
        self.supply.objects.forget(peer)
        if main is not None and main.shm:
            self.shm_sweep.add(main.pid)  # its files in /dev/shm, once its process is gone
        dists.source_left(peer, self.core.queues.first_peer_with)
        peer_log.info("Main %s %s: dropped %d queued and stopped %d running tasks",
                      main.name if main else peer.hex()[:8], why, dropped.queued,
                      dropped.running)

    def _forget(self, peer: bytes) -> None:
        """What waits to go to ``peer``, or came from it in part, goes with it."""
        self.outbox.drop(peer)
        self.backlog.drop(peer)
        self.carried.forget(peer)
        for key in [k for k in self._unsent_output if k[0] == peer]:
            del self._unsent_output[key]

    def tick(self, now: float, lost_after: float, every: float) -> None:
        """Drop silent Mains and say a heartbeat to the others that heard nothing from here
        for ``every`` seconds (not at every tick: a Main of hundreds of workers hears each
        one's)."""
        for peer in self.mains.silent(now, lost_after):
            self.drop_main(peer, f"was silent for {lost_after:.0f} s")
        # Each Main hears from here at least every ``every`` seconds: a heartbeat when nothing
        # else went to it meanwhile (answers to its Pings, results, states stand for them: one
        # message a second less per Main, for a worker of many Mains as for a Main of hundreds
        # of workers)
        for peer in [p for p, x in self.mains.items() if now - x.sent_at >= every]:
            self.send(peer, m.Heartbeat())

    def heartbeat(self) -> None:
        """Say this worker is alive to every Main (also from inside a long transfer)."""
        for peer in self.mains:
            self.send(peer, m.Heartbeat())

    def sweep_shm(self) -> None:
        """Remove the /dev/shm files of Mains that left, once their processes are gone."""
        for pid in list(self.shm_sweep):
            if any(x.pid == pid and x.shm for x in self.mains.values()):
                self.shm_sweep.discard(pid)  # it came back
            elif not exists(pid):
                _shm.remove_of(pid)
                self.shm_sweep.discard(pid)

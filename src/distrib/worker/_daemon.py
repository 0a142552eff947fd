"""The worker daemon: one thread, one poll loop over the ROUTER socket and executor pipes.

    Mains --(DEALER/ROUTER)--> decode + validate --> Slots (queues, fair share, executors)
                                                 --> Distributions (manifest, blobs, trees)
    executors --(socketpair)--> ready / out / done / EOF (died) --> Slots --> Results to Mains

The decisions live in ``Slots`` (pure) and ``Distributions``; this loop moves bytes, turns what
it reads into their events and carries out the actions they return. The daemon never unpickles
a payload: call frames go to executors and result frames to the Main as they came.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import zmq

from distrib import _shm
from distrib._errors import ConfigError, ProtocolError, WorkspaceError
from distrib._logs import RateLimited
from distrib._process import exists
from distrib._scratch import remove_dead_runs, remove_tree
from distrib.wire import _codec, _envspec, _facts, _keys, _transport
from distrib.wire import _messages as m
from distrib.wire._keys import KeyPair
from distrib.wire._limits import MAX_MESSAGE_BYTES, OUTPUT_CHUNK
from distrib.wire._messages import Outcome, RefusalCode
from distrib.wire._pipe import Verb
from distrib.wire._record import ErrorRecord
from distrib.worker import _pool
from distrib.worker._direct import FIRST_ID, LOCAL, Child, Direct, Host
from distrib.worker._diskuse import DiskUse
from distrib.worker._dists import Change, Distributions, Failed, Ready
from distrib.worker._envs import EnvPolicy, Environments
from distrib.worker._gate import Gate
from distrib.worker._control import COMMANDS, ControlSocket, reply
from distrib.worker._lending import Lending
from distrib.worker._mains import MainPeer, Mains
from distrib.worker._memory import MemoryWatch
from distrib.worker import _policy
from distrib.worker._policy import Policy
from distrib.worker._objects import Objects
from distrib.worker._outbox import Outbox
from distrib.worker._pool import ExecutorProcess, Recipe, Template, Zygote
from distrib.worker._slots import Action, EnvKey, Kill, Report, Send, Skip, Slots, Spawn
from distrib.worker._state import QueuedTask
from distrib.worker._warming import Warming
from distrib.workspace._store import Store

log = logging.getLogger("distrib.worker")
peer_log = RateLimited(log)  # for what a remote peer (or task code) can trigger

_OUTCOMES = {outcome.value: outcome for outcome in Outcome}
_PEER_ADDRESS = re.compile(r"(tcp://)?[A-Za-z0-9.\-]{1,253}:[0-9]{1,5}")  # (as Mains name them)
ZYGOTE_DEATHS = 5  # interpreters started ahead that die unused before no more are started
STUCK_HAND_BACK = 1.0  # seconds every slot is held by waiting tasks before queued ones go back
SERVED_LOG_EVERY = 60.0  # seconds between log lines saying which Mains hold the slots


class Daemon:
    """A worker daemon bound to ``endpoint`` lending what ``policy`` allows (and, with
    ``policy_file``, what that file says over the ``flags`` as it changes)."""

    def __init__(
        self,
        endpoint: str,
        policy: Policy,
        name: str,
        cache_dir: Path,
        heartbeat_interval: float = 1.0,
        lost_after: float = 10.0,
        exit_with_parent: int | None = None,
        key: KeyPair | None = None,
        authorized: Path | None = None,
        idle_after: float = 300.0,
        max_cache: int | None = None,
        max_queued: int = 256 << 20,
        env_policy: EnvPolicy = EnvPolicy(),
        max_objects: int = 2 << 30,
        policy_file: Path | None = None,
        flags: Policy | None = None,
        max_parked: int | None = None,
    ) -> None:
        self.name = name
        self.worker_id = uuid.uuid4().hex
        self.heartbeat_interval = heartbeat_interval
        self.lost_after = lost_after
        self.exit_with_parent = exit_with_parent
        self.key = key
        remove_dead_runs(cache_dir / "runs")
        self.runs = cache_dir / "runs" / f"{os.getpid()}-{self.worker_id[:8]}"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.gate = Gate(self.ctx, key, authorized)  # before the bind: ZAP must be there first
        self.sock, self.address = _transport.router(self.ctx, endpoint, key)
        self.gate.watch(self.sock)
        self.mains = Mains()
        self.policy = policy
        self.policy_file = policy_file
        self._flags = flags or policy  # what the flags said: the file's settings go over these
        self._policy_seen: tuple[int, int, int] | None = None  # the file as last read
        if policy_file is not None:
            self._policy_seen = self._policy_signature()
        self.lending = Lending(policy)
        self.away = ""  # why the machine is not lent now (its hours, its owner's load)
        self._told = ("serving", "")  # the state Mains last heard, and why
        self._served_logged = time.monotonic()  # when the log last said who holds the slots
        self.slots = Slots(policy.threads, idle_after, max_queued, max_parked)
        self.objects = Objects(self.runs / "objects", max_objects)
        Objects.remove_stale()
        self.control = ControlSocket(cache_dir)
        self.state = "serving"  # or "paused", "draining": the owner's word (ControlSocket)
        self.memory = MemoryWatch(policy.max_task_memory, policy.max_memory)
        self._name_memory_settings()
        self._memory_kills: dict[int, tuple[str, int]] = {}  # executor -> why, limit
        self._shm_sweep: set[int] = set()  # Mains (pids) that left: remove their /dev/shm files
        store = Store(cache_dir, max_cache)
        store.clean_leftovers()
        self.disk_use = DiskUse(self._measure_disk)  # (started once all it reads is here)
        self.dists = Distributions(store, self._send,
                                   self._dist_replaced,
                                   self.slots.active_dists)
        self.procs: dict[int, ExecutorProcess] = {}
        self._forking = _pool.become_subreaper()  # executors forked from templates
        self.templates: dict[EnvKey, Template] = {}
        self._zygote: Zygote | None = None  # the next template's interpreter, started ahead
        self._zygote_deaths = 0  # ones that died before a template took them
        self._no_fork: set[EnvKey] = set()  # environments whose templates cannot fork
        self._to_fork: set[EnvKey] = set()  # ready templates asked for executors this turn
        self.warming = Warming()  # Mains whose Hello asked for executors ahead of their calls
        self._stuck = False  # every slot is held by a task waiting for its calls
        self._stuck_since = 0.0
        self.envs = Environments(cache_dir / "venvs", env_policy, lambda: self.name,
                                 self._wake_loop, self._envs_in_use, self._env_dropped)
        self.envs.blob_path = store.blob_path
        self._specs: dict[str, _envspec.EnvSpec] = {}  # Python environments Mains described
        self._quiet_fds: set[int] = set()  # connections of a Goodbye or a status query
        self.dropped = 0  # malformed messages
        self.reruns = 0  # tasks run again here after a crash or a lost worker (at least once)
        self._isolation = ""  # how executors keep task writes private, once one said
        self._outbox = Outbox()
        self._delegated: dict[tuple[bytes, int], int] = {}  # (a worker's connection, its id
        # for a call) -> this worker's id for it
        self.direct = Direct(Host(
            name, _facts.platform_tag(), self.ctx, key, lost_after, self._delegate_hello,
            self._run_here, self._cancel_here, self._runs_here, self._load_here,
            self._lends_here,
            self._deliver, self._relay, self._parent_runs, self._send, self.dists.manifest,
            self.dists.blob))
        self._stop = False
        self._announcer: Any = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def _wake_loop(self) -> None:
        """(any thread) Make the loop's poll return: a build ended."""
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
        next_tick = time.monotonic()
        try:
            while not self._stop:
                poller = zmq.Poller()
                for sock in (self.sock, self._wake_r, *self.gate.sockets(),
                             *self.direct.sockets()):
                    poller.register(sock, zmq.POLLIN)
                poller.register(self.control.fileno(), zmq.POLLIN)
                for proc in self.procs.values():
                    poller.register(proc.fileno(), zmq.POLLIN)
                for template in self.templates.values():
                    if not template.ready:
                        poller.register(template.fileno(), zmq.POLLIN)
                timeout = max(0.0, next_tick - time.monotonic())
                events = dict(poller.poll(int(timeout * 1000) + 1))
                for sock in self.gate.sockets():
                    if sock in events:
                        self.gate.on_readable(sock)
                self._drop_closed()
                if self.sock in events:
                    self._drain_socket()
                for sock in self.direct.sockets():
                    if sock in events:
                        self.direct.on_readable(sock, time.monotonic())
                for ex_id, proc in list(self.procs.items()):
                    if proc.fileno() in events:
                        self._on_executor(ex_id, proc)
                        # Messages read ahead into the pipe's buffer won't wake the poller.
                        while self.procs.get(ex_id) is proc and proc.pipe.buffered():
                            self._on_executor(ex_id, proc)
                for key, template in list(self.templates.items()):
                    if not template.ready and template.fileno() in events:
                        self._on_template(key, template)
                if self._wake_r.fileno() in events:
                    self._drain_wake()
                    self._on_builds()
                if self.control.fileno() in events:
                    self._on_control()
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(now)
                    next_tick = now + min(self.heartbeat_interval, 0.25)
                self._apply(self.slots.schedule(now))
                if self.slots.stuck() != self._stuck:  # (every Main hears it)
                    self._stuck = not self._stuck
                    self._stuck_since = now
                    self.slots.rewaited.update(self.mains)
                while self.slots.rewaited:  # (tasks waiting for their calls ended or lent)
                    peer = self.slots.rewaited.pop()
                    if peer in self.mains:
                        self._send(peer, m.Waiting(*self.slots.waiting_for_calls(peer)))
                if self.warming:
                    self._tell(self.warming.done(self.slots.executors.values()))
                self._outbox.flush(self._send)
                if self.state == "draining" and not self.slots.running_any():
                    log.info("worker %s drained: its running tasks are done; leaving",
                             self.name)
                    self._stop = True
        finally:
            self.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop = True

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.gate.request_reload()
        self._policy_seen = None  # (read at the next tick)

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
             "slots": str(self.slots.slots)}, interfaces)
        log.info("announcing %s on the LAN as %s", self.address, self.name)

    def close(self) -> None:
        self.control.close()
        if self._announcer is not None:
            self._announcer.close()
        for proc in self.procs.values():  # signal all first, then reap: many don't wait in turn
            proc.signal_kill()
        for proc in self.procs.values():
            proc.kill()
        self.procs.clear()
        for template in self.templates.values():
            template.kill()
        if self._zygote is not None:
            self._zygote.kill()
        self.envs.close()
        self.objects.close()
        self.direct.close()
        for peer in list(self.mains):
            self._send(peer, m.Refused(RefusalCode.SHUTTING_DOWN, "worker is shutting down"))
        self.gate.close(self.sock)
        self.sock.close(linger=2000)  # (the last results and goodbyes still go out)
        self.ctx.term()
        remove_tree(self.runs)  # (an overlay's work folder has mode 000)
        log.info("worker %s stopped", self.name)

    # --- the owner's word ----------------------------------------------------------------------

    def _on_control(self) -> None:
        accepted = self.control.accept()
        if accepted is None:
            return
        conn, command = accepted
        if command not in COMMANDS:
            reply(conn, f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}")
            return
        if self.state == "draining" and command in ("pause", "resume"):
            reply(conn, "draining: it leaves when its running tasks are done; start it again "
                        "afterwards")
            return
        if command != "state":
            self._set_state({"pause": "paused", "resume": "serving",
                             "drain": "draining"}[command])
        held = self.slots.held()
        reply(conn, f"{self.state}: {sum(held.values())} slots busy, "
                    f"{self.slots.waiting()} tasks waiting")

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        log.warning("worker %s, as its owner asked: %s", self.name, {
            "paused": "paused: no new tasks; queued ones go back to their Mains",
            "serving": "resumed", "draining": "draining: no new tasks, queued ones go back "
                                              "to their Mains, and it leaves when its running "
                                              "tasks are done"}[state])
        self._update_state()

    def _effective_state(self) -> tuple[str, str]:
        """What Mains are told: serving, paused or draining, and why ("": the owner's word)."""
        if self.state == "serving" and self.away:
            return "paused", self.away
        return self.state, ""

    def _update_state(self) -> None:
        """Start or stop lending as the owner's word, hours and load say; tell the Mains."""
        told = self._effective_state()
        if told == self._told:
            return
        was_serving, was_why = self._told[0] == "serving", bool(self._told[1])
        self._told = told
        self.slots.paused = told[0] != "serving"
        if told[1]:
            log.warning("worker %s stops lending: %s", self.name, told[1])
        elif told[0] == "serving" and was_why:  # (after the owner's word, that is logged)
            log.warning("worker %s lends again", self.name)
        if self.slots.paused and was_serving:
            vacate = bool(told[1]) and self.policy.when_idle == "vacate"
            if vacate and self.slots.running_any():
                log.warning("worker %s vacates: its running tasks are stopped and go back to "
                            "their Mains (when_idle = \"vacate\")", self.name)
            self._apply(self.slots.hand_back(vacate))
        self._tell_all()

    def _worker_state(self, peer: bytes) -> m.WorkerState:
        state, why = self._effective_state()
        main = self.mains.get(peer)
        account = main.account if main is not None and main.account else peer
        return m.WorkerState(state, self.slots.offered(account), self.memory.per_task or 0, why)

    def _tell_all(self) -> None:
        for peer in self.mains:
            self._send(peer, self._worker_state(peer))

    # --- the owner's policy ------------------------------------------------------------------

    def _reload_policy(self) -> None:
        """Read the policy file again if it changed (or after SIGHUP) and apply what changed;
        a file that does not parse leaves the policy as it was."""
        assert self.policy_file is not None
        try:
            seen = self._policy_signature()
        except OSError as exc:
            if self._policy_seen != (-1, -1, -1):
                log.warning("cannot read policy file %s: %s; the policy stays as it was",
                            self.policy_file, exc.strerror)
            self._policy_seen = (-1, -1, -1)
            return
        if seen == self._policy_seen:
            return
        # A file changed within the last second may still be being written: read it again
        # at the next tick too.
        self._policy_seen = seen if time.time_ns() - seen[0] > 1_000_000_000 else None
        try:
            policy = _policy.read(self.policy_file, self._flags)
        except Exception as exc:  # (ConfigError; anything else must not stop the daemon)
            if self._policy_seen is not None:  # (once per change)
                log.warning("policy not changed: %s", exc if isinstance(exc, ConfigError)
                            else f"policy file {self.policy_file}: {exc!r}")
            return
        if policy != self.policy:
            log.warning("policy from %s: %s", self.policy_file, policy.describe())
            self._apply_policy(policy)

    def _name_memory_settings(self) -> None:
        """A limit the policy file set (not the flag's) is named as the file's key."""
        policy, flags, in_file = self.policy, self._flags, f" in its policy file {self.policy_file}"
        self.memory.per_task_setting = "--max-task-memory" \
            if policy.max_task_memory == flags.max_task_memory else f"max_task_memory{in_file}"
        self.memory.total_setting = "--max-memory" if policy.max_memory == flags.max_memory \
            else f"max_memory{in_file}"

    def _policy_signature(self) -> tuple[int, int, int]:
        assert self.policy_file is not None
        st = self.policy_file.stat()
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _apply_policy(self, policy: Policy) -> None:
        old, self.policy = self.policy, policy
        self.lending.policy = policy
        self.memory.per_task, self.memory.total = policy.max_task_memory, policy.max_memory
        self._name_memory_settings()
        if policy.nice != old.nice:
            self._renice(policy.nice)
            if self._zygote is not None:  # (a lower niceness it may not take: a new one)
                self._zygote.kill()
                self._zygote = None
        if policy.threads != old.threads:
            self._apply(self.slots.resize(policy.threads))
        self._tell_all()  # (slots and memory limit, as each Main may use them)

    def _renice(self, nice: int) -> None:
        """Every thread of the executors, what they started, and the templates (executors
        forked later inherit theirs) runs at ``nice`` now."""
        refused = 0
        pids = [proc.pid for proc in self.procs.values() if proc.pid] + [
            t.proc.pid for t in self.templates.values()]
        for pid in pids:
            try:
                tree = [psutil.Process(pid)]
                tree += tree[0].children(recursive=True)
            except psutil.Error:
                continue
            for p in tree:
                try:
                    threads = [t.id for t in p.threads()]
                except psutil.Error:
                    continue
                for tid in threads:  # (on Linux, a niceness is each thread's own)
                    try:
                        os.setpriority(os.PRIO_PROCESS, tid, nice)
                    except ProcessLookupError:
                        pass
                    except OSError:
                        refused += 1
        if refused:
            log.warning("running executors keep their niceness: this user may not lower it to "
                        "%d (new executors start at %d)", nice, nice)

    def _check_lending(self) -> None:
        away = self.lending.check()
        if away != self.away:
            self.away = away
            self._update_state()

    # --- messages from Mains -----------------------------------------------------------------

    def _send(self, peer: bytes, message: m.Message) -> None:
        main = self.mains.get(peer)
        try:
            _transport.send(self.sock, message, peer,
                            main.max_frame if main is not None else MAX_MESSAGE_BYTES)
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
                self.dropped += 1
                main = self.mains.get(peer)
                peer_log.warning("dropped a malformed message from %s: %s",
                                 f"Main {main.name}" if main else f"peer {peer.hex()[:8]}", exc)
                if main is not None:  # a peer that breaks the protocol is not trusted further
                    self._drop_main(peer, "broke the protocol")
                    self._send(peer, m.Refused(RefusalCode.MALFORMED,
                                               "malformed message; say Hello again"))
                continue
            # (the Main's public key, as ZAP let it in: its quota is that key's)
            self._on_message(peer, message, frames[1].get("User-Id") if self.key else "")
            main = self.mains.get(peer)
            if main is not None:
                main.fd = frames[1].get(zmq.SRCFD)
            elif isinstance(message, (m.Goodbye, m.StatusRequest)):
                self._quiet_fds.add(frames[1].get(zmq.SRCFD))  # its closing is no news

    def _drop_closed(self) -> None:
        """A closed connection is a Main's death notice: its tasks stop now, not after the
        heartbeat timeout (a Main killed with -9 says no Goodbye)."""
        if not self.gate.closed:
            return
        self._drain_socket()  # what the Main sent before it closed (its Goodbye) goes first
        closed = self.gate.take_closed()
        limit = f"a message over the {MAX_MESSAGE_BYTES >> 20} MiB limit"
        for fd in closed:
            peers = self.mains.on_connection(fd)
            for peer in peers:
                self._drop_main(peer, "closed its connection without a goodbye (killed, cut "
                                f"off, or dropped by libzmq for {limit})")
            if not peers and fd not in self._quiet_fds:
                peer_log.info("a connection closed before a Hello or after its Main was dropped "
                              "(libzmq also drops a peer that sends %s)", limit)
            self._quiet_fds.discard(fd)

    def _on_message(self, peer: bytes, msg: m.Message, key: str = "") -> None:
        if isinstance(msg, m.StatusRequest):
            try:
                self._send(peer, m.Status(self.status()))
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
            self._send(peer, m.Refused(RefusalCode.UNKNOWN_PEER, "unknown peer: send Hello first"))
            return
        main.last_seen = time.monotonic()
        if isinstance(msg, m.Submit):
            self._on_submit(peer, msg)
        elif isinstance(msg, m.Cancel) and main.account:
            for task_id in msg.task_ids:
                ours = self._delegated.pop((peer, task_id), None)
                if ours is not None:
                    self._apply(self.slots.cancel(main.account, ours, time.monotonic()))
        elif isinstance(msg, m.Cancel):
            for task_id in msg.task_ids:
                self._apply(self.slots.cancel(peer, task_id, time.monotonic()))
        elif isinstance(msg, m.Manifest):
            self._on_change(self.dists.on_manifest(msg))
        elif isinstance(msg, m.Blobs) and self.envs.building(msg.dist):
            self._on_wheels(peer, msg)
        elif isinstance(msg, m.Blobs):
            self._on_change(self.dists.on_blobs(msg))
        elif isinstance(msg, m.DistFailed) and self.envs.building(msg.dist):
            self._reject_wheels(msg.dist, peer, msg.reason)
        elif isinstance(msg, m.DistFailed):
            self._on_change(self.dists.on_failed(peer, msg))
        elif isinstance(msg, m.ChildResult):
            self._on_child_result(peer, msg)
        elif isinstance(msg, m.Peers):
            self._on_peers(main, msg)
        elif isinstance(msg, m.Objects):
            self._on_objects(peer, msg)
        elif isinstance(msg, m.ObjectsFailed):
            self._objects_failed(peer, msg.keys, msg.reason)
        elif isinstance(msg, m.Goodbye):
            self._drop_main(peer, "said goodbye")
        elif not isinstance(msg, m.Heartbeat):
            peer_log.warning("dropped unexpected %s from Main %s", type(msg).__name__, main.name)

    def _on_hello(self, peer: bytes, msg: m.Hello, key: str) -> None:
        if msg.protocol != m.PROTOCOL_VERSION:
            peer_log.warning("refused Main %s: protocol %d, this worker speaks %d",
                             msg.name, msg.protocol, m.PROTOCOL_VERSION)
            self._send(peer, m.Refused(RefusalCode.PROTOCOL, f"protocol {msg.protocol} "
                                       f"unsupported; this worker speaks {m.PROTOCOL_VERSION}"))
            return
        known = self.mains.get(peer)
        if known is not None and (known.account or msg.delegate):  # (a Main turned delegate,
            self._drop_main(peer, "said Hello again")  # or the other way: it starts over)
        if msg.delegate:
            self._on_delegate_hello(peer, msg, key)
            return
        try:
            spec = _envspec.decode(msg.environment)
        except ProtocolError as exc:
            peer_log.warning("refused Main %s: %s", msg.name, exc)
            self._send(peer, m.Refused(RefusalCode.PROTOCOL, str(exc)))
            return
        env, problem = self.envs.plan(spec)
        if env:
            self._specs[env] = spec
            if not problem and self.envs.ready(env):
                self.envs.used(env)
                self.slots.env_ready(env)
        shm = len(msg.shm_probe) == 2 and _shm.check_probe(msg.shm_probe[0], msg.shm_probe[1],
                                                            msg.pid)
        main = self.mains.welcome(peer, msg, time.monotonic(), env, problem, shm, key)
        if shm:
            self.objects.shares_memory(peer)
        quota = self.gate.quota(key)
        self._apply(self.slots.set_quota(peer, quota.slots, quota.priority))
        peer_log.info("serving Main %s (pid %d)%s%s", msg.name, msg.pid,
                      f", {quota}" if str(quota) else "",
                      f"; it cannot run here: {problem}" if problem else "")
        self._welcome(main, problem, shm)
        if msg.dist and msg.warm > 0:
            self._warm(main, msg.dist, msg.warm)

    def _welcome(self, main: MainPeer, problem: str, shm: bool) -> None:
        self._send(main.peer, m.Welcome(m.PROTOCOL_VERSION, self.worker_id, self.name,
                                        _facts.platform_tag(), _facts.python_version(),
                                        self.slots.offered(main.account or main.peer),
                                        os.getpid(), self.envs.versions(), problem,
                                        MAX_MESSAGE_BYTES, shm, self.memory.per_task or 0))
        if self._effective_state()[0] != "serving":
            self._send(main.peer, self._worker_state(main.peer))

    def _on_delegate_hello(self, peer: bytes, msg: m.Hello, key: str) -> None:
        """Another worker sends calls of a Main's tasks here: taken only if that Main's own
        ``Peers`` here name the key it connected with. Its calls count under that Main."""
        account = next((x for x in self.mains.values() if x.key and x.key == msg.delegate
                        and x.main_id == msg.main_id and not x.account), None)
        if account is None or account.hello is None or not key or key not in account.delegates:
            why = ("its Main is not served here" if account is None else
                   f"its Main does not name its key {key or '(none)'} among its workers")
            peer_log.warning("refused calls from %s: %s", msg.name, why)
            self._send(peer, m.Refused(RefusalCode.NOT_DELEGATE, f"worker {self.name} takes "
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
            self._send(other.peer, m.Refused(RefusalCode.NOT_DELEGATE, "its Main no longer "
                                             "names it among its workers"))
            self._drop_main(other.peer, "is no longer named by its Main")
        self.direct.set_peers(main.peer, workers, time.monotonic())

    def _warm(self, main: MainPeer, dist: str, count: int) -> None:
        """Fetch ``dist`` now and start ``count`` executors of it once it is here, ahead of
        the Main's first call (``Warmed`` tells it when they are ready, or why not)."""
        why = main.env_problem or (
            "" if self._effective_state()[0] == "serving" else "the worker is not lending now")
        if why:
            self._send(main.peer, m.Warmed(dist, 0, why))
            return
        self.warming.wish(main.peer, dist, main.env, main.context,
                          min(count, self.slots.slots))
        self.dists.request(dist, main.peer, self.mains.contexts[main.context].preload)
        if main.env and not self.slots.env_is_ready(main.env):
            self._need_env(main.env, main.peer)
        self._start_warm()

    def _start_warm(self) -> None:
        now = time.monotonic()
        for peer, wish in self.warming.startable(self.slots.dist_is_ready,
                                                 self.slots.env_is_ready):
            assert wish.key is not None
            actions = self.slots.warm(wish.key, peer, wish.count, now)
            wish.started = sum(isinstance(a, Spawn) for a in actions)
            self._apply(actions)

    def _on_submit(self, peer: bytes, msg: m.Submit) -> None:
        frames = list(msg.frames)
        sender = self.mains[peer]
        main = self.mains.get(sender.account) if sender.account else sender
        if main is None:
            return  # (dropped with it)
        at = 0
        for spec in msg.tasks:
            task = QueuedTask(main.peer, spec.task_id, spec.dist, spec.threads, spec.timeout,
                              [*spec.inline, *frames[at: at + spec.nframes]], main.context,
                              main.env, tuple(spec.objects), depth=spec.depth)
            at += spec.nframes
            if sender.account:  # (a call sent for the Main: this worker's id for it)
                if (peer, spec.task_id) in self._delegated:
                    peer_log.warning("dropped call %d from %s: that id is in use", spec.task_id,
                                     sender.name)
                    continue
                task.task_id, task.reply, task.reply_id = next(self.direct.ids), peer, spec.task_id
                self._delegated[(peer, spec.task_id)] = task.task_id
            elif spec.task_id >= FIRST_ID:
                self._report(task, Outcome.ERROR, ErrorRecord(
                    "distrib.ProtocolError", f"task ids must be below {FIRST_ID}").to_wire(), [])
                continue
            self.reruns += spec.attempt > 0
            if main.env_problem:  # (the Welcome said so; a Main that sends anyway hears it)
                self._report(task, Outcome.ENV_ERROR, ErrorRecord(
                    "distrib.DependencyError", main.env_problem).to_wire(), [])
                continue
            if spec.threads > self.slots.slots:  # it can never run here: say so, fetch nothing
                self._apply(self.slots.submit(task))
                continue
            if self.slots.paused:  # (before fetching anything for it)
                self._report(task, Outcome.DEFERRED, {}, [])
                continue
            if spec.shm and not sender.shm:
                self._report(task, Outcome.ERROR, ErrorRecord(
                    "distrib.ProtocolError", f"worker {self.name} does not share this Main's "
                    "/dev/shm, yet its call names frames there").to_wire(), [])
                continue
            if spec.shm:
                task.shm = spec.shm
            if spec.objects and not self._plan_objects(task, spec.objects):
                continue
            self.dists.request(spec.dist, peer, self.mains.contexts[main.context].preload)
            if main.env and not self.slots.env_is_ready(main.env):
                self._need_env(main.env, main.peer)
            self._apply(self.slots.submit(task))

    def _run_extras(self, task: QueuedTask) -> list[Any]:
        """What an executor needs besides a task's frames: its Main's folder of shared
        objects, its frames in /dev/shm, and whose /dev/shm takes large result frames."""
        main = self.mains.get(task.peer)
        results_to = main.pid if main is not None and main.shm and not task.reply else 0
        return [str(self.objects.where(task.peer)) if task.objects else "", task.shm,
                results_to]

    # --- shared objects ----------------------------------------------------------------------

    def _plan_objects(self, task: QueuedTask, objects: dict[str, int]) -> bool:
        """Ask for the shared objects ``task`` passes that are not here; False if it ended
        (deferred, or its objects can never fit)."""
        peer = task.peer
        plan = self.objects.plan(peer, objects, lambda: self.slots.objects_in_use(peer))
        if plan.error:
            self._report(task, Outcome.ERROR, ErrorRecord(
                "distrib.SerializationError", f"worker {self.name}: {plan.error}").to_wire(), [])
            return False
        if plan.defer:
            self.slots.counters["deferred"] += 1
            self._report(task, Outcome.DEFERRED, {}, [])
            return False
        task.waits = plan.waits
        if plan.ask:
            self._send(peer, m.NeedObjects(plan.ask))
        return True

    def _on_objects(self, peer: bytes, msg: m.Objects) -> None:
        arrived: set[str] = set()
        at = 0
        files = msg.files or [""] * len(msg.keys)
        for key, count, file in zip(msg.keys, msg.counts, files):
            frames = list(msg.frames[at:at + count])
            at += count
            try:
                why = self.objects.linked(peer, key, file) if file else \
                    self.objects.arrived(peer, key, frames)
            except OSError as exc:
                why = f"this worker could not store it: {exc}"
                log.error("cannot store a shared object of Main %s: %s", self.mains[peer].name,
                          exc)
            if why == "":
                arrived.add(key)
            elif why is not None:
                self._objects_failed(peer, [key], why)
        self.slots.objects_arrived(peer, arrived)

    def _objects_failed(self, peer: bytes, keys: list[str], why: str) -> None:
        self.objects.failed(peer, keys)
        self._apply(self.slots.objects_failed(peer, set(keys), ErrorRecord(
            "distrib.SerializationError", f"worker {self.name} could not get a shared object "
            f"the call passes: {why}").to_wire()))

    # --- Python environments -----------------------------------------------------------------

    def _need_env(self, env: str, peer: bytes) -> None:
        """A task of ``peer`` waits for the Python environment ``env``: build it (once)."""
        spec = self._specs[env]
        joined, missing = self.envs.request(spec, peer, lambda d: self.dists.store.has(d))
        if not joined:
            return
        if missing:
            self._send(peer, m.NeedBlobs(env, sorted(missing)))
        text = f"building environment: {spec.summary()} (Python {spec.python})"
        peer_log.info("environment %s for Main %s: %s", env[:12], self.mains[peer].name, text)
        self._send(peer, m.EnvProgress(text))

    def _on_wheels(self, peer: bytes, msg: m.Blobs) -> None:
        sizes = {w.digest: w.size for w in self._specs[msg.dist].wheels}
        for digest, frame in zip(msg.hashes, msg.frames):
            if digest not in sizes or msg.dist not in self.envs.wanted(digest):
                continue
            try:
                self.dists.store.put_compressed(digest, frame.buffer if hasattr(frame, "buffer")
                                                else frame, sizes[digest])
            except WorkspaceError as exc:
                self._reject_wheels(msg.dist, peer, f"a wheel this Main sent is bad: {exc}")
                return
            self.envs.blob_arrived(digest)

    def _reject_wheels(self, env: str, peer: bytes, why: str) -> None:
        """A Main cannot provide the wheels of a build: its tasks of it fail; other Mains
        waiting for the same build send their own."""
        info = self.envs.reject(env, peer, why)
        if info is not None:
            self._apply(self.slots.env_failed(env, info, peer))
            self._tell(self.warming.fail(why, env=env, peer=peer))

    def _on_builds(self) -> None:
        for done in self.envs.finished():
            self.disk_use.refresh()
            if done.info is None:
                peer_log.info("environment %s built in %.1f s", done.env_id[:12], done.seconds)
                self.slots.env_ready(done.env_id)
                self._start_warm()
                for peer in done.peers & set(self.mains):
                    self._send(peer, m.EnvProgress(
                        f"environment built in {done.seconds:.1f} s"))
            else:
                peer_log.warning("environment %s: %s", done.env_id[:12],
                                 done.info.get("message", ""))
                self._apply(self.slots.env_failed(done.env_id, done.info))
                self._tell(self.warming.fail(done.info.get("message", ""), env=done.env_id))

    def _envs_in_use(self) -> set[str]:
        """Environments of connected Mains, live executors and queued tasks."""
        executors = {self.mains.contexts[ex.key.context].env
                     for ex in self.slots.executors.values()
                     if ex.key.context in self.mains.contexts}
        return {x.env for x in self.mains.values()} | executors | self.slots.active_envs()

    def _env_dropped(self, env: str) -> None:
        self.slots.env_dropped(env)

    def _on_change(self, change: Change) -> None:
        if isinstance(change, Ready):
            self.slots.dist_ready(change.dist)
            self._start_warm()
            self.disk_use.refresh()
        elif isinstance(change, Failed):
            self._apply(self.slots.dist_failed(change.dist, change.info, change.peer))
            self._tell(self.warming.fail(change.info.get("message", "fetch failed"),
                                         dist=change.dist, peer=change.peer))

    def _tell(self, messages: list[tuple[bytes, m.Warmed]]) -> None:
        for peer, msg in messages:
            self._send(peer, msg)

    def _drop_main(self, peer: bytes, why: str) -> None:
        sender = self.mains.get(peer)
        if sender is not None and sender.account:  # (its calls stop; the Main's stay)
            now = time.monotonic()
            calls = [k for k in self._delegated if k[0] == peer]
            for key in calls:
                self._apply(self.slots.cancel(sender.account, self._delegated.pop(key), now))
            self.mains.forget(peer, {ex.key.context for ex in self.slots.executors.values()})
            self._outbox.drop(peer)
            self.dists.source_left(peer, self.slots.queues.first_peer_with)
            peer_log.info("%s %s: stopped the %d call(s) it sent here", sender.name, why,
                          len(calls))
            return
        if sender is not None:
            for other in [x.peer for x in self.mains.values() if x.account == peer]:
                self._drop_main(other, "sent calls for a Main that left")
            self.direct.main_left(peer)
        actions, queued, running = self.slots.drop_main(peer)
        self._apply(actions)
        self.warming.forget(peer)
        main = self.mains.forget(peer, {ex.key.context for ex in self.slots.executors.values()})
        self._outbox.drop(peer)
        self.objects.forget(peer)
        if main is not None and main.shm:
            self._shm_sweep.add(main.pid)  # its files in /dev/shm, once its process is gone
        self.dists.source_left(peer, self.slots.queues.first_peer_with)
        peer_log.info("Main %s %s: dropped %d queued and stopped %d running tasks",
                      main.name if main else peer.hex()[:8], why, queued, running)

    # --- executors ---------------------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        """Carry out what ``Slots`` decided; a failed write to an executor is its death."""
        todo, i = actions, 0
        while i < len(todo):  # (a plain list: this runs for every task)
            action = todo[i]
            i += 1
            if isinstance(action, Report):
                self._report(action.task, action.outcome, action.info, action.frames,
                             action.shm)
            elif isinstance(action, Kill):
                proc = self.procs.pop(action.ex_id, None)
                if proc is not None:
                    proc.kill()
            elif isinstance(action, Spawn):
                dist = self.dists.get(action.key.dist)
                assert dist is not None and dist.env is not None
                context = self.mains.contexts[action.key.context]
                recipe = Recipe(action.key.threads, dist.env, dist.main, self.runs,
                                context.argv, context.environ,
                                self.envs.python(context.env) if context.env else None,
                                context.preload, context.max_payload, self.policy.nice)
                try:
                    self.procs[action.ex_id] = _pool.executor(recipe)
                    self._start(action.key, recipe, action.ex_id)
                except OSError as exc:
                    log.error("cannot start an executor: %s", exc)
                    record = ErrorRecord("distrib.WorkerCrashed", f"worker {self.name} could "
                                         f"not start an executor: {exc}")
                    todo = [*todo, *self.slots.executor_died(action.ex_id, record.to_wire())]
            else:
                proc = self.procs.get(action.ex_id)
                if proc is None:
                    continue  # (stopped by an action before this one)
                try:
                    if isinstance(action, Send):
                        proc.run([(run.key, run.task.frames, self._run_extras(run.task))
                                  for run in action.runs])
                    else:
                        assert isinstance(action, Skip)
                        proc.skip(action.key)
                except OSError as exc:
                    log.debug("executor %d: %s", proc.pid, exc, exc_info=True)
                    todo = [*todo, *self._executor_died(action.ex_id)]
        if self._to_fork:
            self._fork_waiting()

    def _start(self, key: EnvKey, recipe: Recipe, ex_id: int) -> None:
        """Attach executor ``ex_id`` to a process: forked from its environment's template
        (started now if there is none; the executor waits for its import), else spawned."""
        ex = self.procs[ex_id]
        if not self._forking or key in self._no_fork:
            _pool.spawn(recipe, ex)
            return
        now = time.monotonic()
        template = self.templates.get(key)
        if template is None or template.proc.poll() is not None:
            if template is not None:
                self._drop_template(key)
            zygote, self._zygote = self._zygote, None  # (another is started when all is calm)
            template = self.templates[key] = Template.start(recipe, now, zygote)
        template.last_used = now
        template.waiting.append(ex_id)  # (forked with the others of this turn, at once)
        if template.ready:
            self._to_fork.add(key)

    def _keep_zygote(self) -> None:
        """Have an interpreter started ahead for the next template, once no template is
        importing (its start would slow theirs)."""
        zygote = self._zygote
        if zygote is not None and zygote.proc.poll() is not None:
            zygote.kill()  # (it died: reaped, and replaced, unless they keep dying)
            self._zygote = None
            self._zygote_deaths += 1
            if self._zygote_deaths == ZYGOTE_DEATHS:
                log.warning("the interpreters started ahead for templates keep dying; "
                            "templates start their own (about 0.1 s more at a first call)")
        if self._zygote is None and self._zygote_deaths < ZYGOTE_DEATHS and all(
                t.ready for t in self.templates.values()):
            try:
                self._zygote = Zygote(self.policy.nice)
            except OSError as exc:
                log.debug("cannot start an interpreter ahead: %s", exc)

    def _fork_waiting(self) -> None:
        """Fork the executors ready templates were asked for in this turn, each template's at
        once (it forks them one after the other while this loop goes on)."""
        keys, self._to_fork = self._to_fork, set()
        for key in keys:
            template = self.templates.get(key)
            if template is not None and template.ready:
                self._fork(key, template)

    def _fork(self, key: EnvKey, template: Template) -> None:
        waiting = [ex for ex_id in template.waiting
                   if (ex := self.procs.get(ex_id)) is not None and ex.theirs is not None]
        template.waiting.clear()
        failed = template.fork(waiting)
        if failed:
            self._drop_template(key)
            template.waiting = [i for i, ex in self.procs.items() if ex in failed]
            self._spawn_waiting(template)

    def _on_template(self, key: EnvKey, template: Template) -> None:
        """A template finished importing its environment: fork the executors waiting for it
        (or, if it cannot, spawn them)."""
        try:
            header, _ = template.control.recv()
        except (EOFError, OSError, ValueError):
            header = ["died"]
        if header[0] == Verb.READY:
            template.ready = True
            self._fork(key, template)
            return None
        if header[0] == Verb.NOFORK and key not in self._no_fork:
            self._no_fork.add(key)
            peer_log.warning("executors of environment %s are spawned one by one (each "
                             "imports it): %s", key.dist[:12], header[1])
        # (an import that raised: each executor imports again and says so itself)
        self._drop_template(key)
        return self._spawn_waiting(template)

    def _spawn_waiting(self, template: Template) -> None:
        for ex_id in template.waiting:
            ex = self.procs.get(ex_id)
            if ex is not None and ex.theirs is not None:
                try:
                    _pool.spawn(template.recipe, ex)
                except OSError as exc:
                    log.error("cannot start an executor: %s", exc)
                    self._apply(self._executor_died(ex_id))
        template.waiting.clear()

    def _reap_strays(self) -> None:
        """As a subreaper, this daemon also adopts what tasks left running when their own
        parent exited (a daemonized helper, say): reap those once they end, or they stay
        zombies. Its own children (executors, templates, builds) are waited for where they
        are started; the first of those met ends the sweep (the rest wait for the next)."""
        ours = {ex.pid for ex in self.procs.values()} | {
            t.proc.pid for t in self.templates.values()} | self.envs.pids() | (
            {self._zygote.proc.pid} if self._zygote is not None else set())
        while True:
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if found is None or found.si_pid in ours or found.si_pid == 0:
                return
            try:
                os.waitpid(found.si_pid, 0)
            except ChildProcessError:
                return

    def _dist_replaced(self, dist: str) -> None:
        """A distribution's tree is removed (drifted, or evicted): its executors and templates
        stop."""
        self._apply(self.slots.env_replaced(dist))
        for key in [k for k in self.templates if k.dist == dist]:
            self._drop_template(key)
        self.disk_use.refresh()

    def _drop_template(self, key: EnvKey) -> None:
        template = self.templates.pop(key, None)
        if template is not None:
            template.kill()

    def _on_executor(self, ex_id: int, proc: ExecutorProcess) -> None:
        try:
            header, frames = proc.read()
        except (EOFError, OSError, ValueError) as exc:
            log.debug("executor %d: %s", proc.pid, exc, exc_info=True)
            self._apply(self._executor_died(ex_id))
            return
        verb, now = header[0], time.monotonic()
        if verb == Verb.READY and len(header) == 2:
            self._note_isolation(str(header[1]))
            self.slots.executor_ready(ex_id, now)
        elif verb == Verb.OUT and len(header) == 4:
            self._forward_output(ex_id, int(header[2]), str(header[3]))
        elif verb == Verb.DONE and len(header) == 5 and header[2] in _OUTCOMES:
            self._apply(self.slots.task_done(ex_id, header[1], _OUTCOMES[header[2]],
                                             header[3], frames, now, header[4]))
        elif verb == Verb.SKIPPED and len(header) == 2:
            self._apply(self.slots.task_skipped(ex_id, header[1], now))
        elif verb == Verb.ENV_ERROR and len(header) == 2:
            self._apply(self.slots.env_error(ex_id, dict(header[1]), frames))
        elif verb == Verb.CALL and len(header) == 11:
            self._on_call(ex_id, header, frames)
        elif verb in (Verb.PARK, Verb.UNPARK) and len(header) == 2:
            run = self.slots.running(ex_id)
            changed = self.slots.park(ex_id, header[1], now) if verb == Verb.PARK else \
                self.slots.unpark(ex_id, header[1])
            if changed and run is not None:
                self.slots.rewaited.add(run.task.peer)
        elif verb == Verb.CANCEL_CHILD and len(header) == 3:
            run = self.slots.running(ex_id)
            if (run is not None and run.key == header[1]
                    and not self.direct.cancel(ex_id, header[1], header[2])):
                self._send(run.task.peer, m.CancelChild(run.task.task_id, header[2]))
        else:
            log.warning("executor %d sent an unexpected %r; stopping it", proc.pid, verb)
            self._apply(self._executor_died(ex_id))

    def _on_call(self, ex_id: int, header: list[Any], frames: list[Any]) -> None:
        """The running task of ``ex_id`` called a @distributed function: its Main runs it
        (relayed), or this worker places it itself (direct; ``_direct``)."""
        _, key, child, name, platforms, threads, retries, timeout, outputs, how, caller = header
        run = self.slots.running(ex_id)
        if run is None or run.key != key:
            return  # (a task stopped meanwhile)
        ints = (child, threads, retries)
        if not (all(isinstance(x, int) and 0 <= x < 1 << 31 for x in ints) and threads >= 1
                and isinstance(name, str) and isinstance(platforms, list)
                and isinstance(outputs, list) and len(platforms) <= 64 and len(outputs) <= 256
                and all(isinstance(x, str) for x in (*platforms, *outputs))
                and (timeout is None or isinstance(timeout, (int, float)))
                and how in ("", "auto", "relayed", "direct") and isinstance(caller, str)):
            log.warning("executor %d sent a malformed call; stopping it",
                        self.procs[ex_id].pid if ex_id in self.procs else 0)
            self._apply(self._executor_died(ex_id))
            return
        self._apply(self.slots.nested(ex_id, key))
        task, main = run.task, self.mains.get(run.task.peer)
        if main is None or main.hello is None:
            return
        how = self.direct.mode(how, main.hello.redistribution, bool(outputs))
        # How errors name the parent: as its Main does, or (one placed by a worker) by the
        # parent's number for it, and the chain above.
        above = self.direct.children.get(task.reply_id) if task.reply == LOCAL else None
        label = above.label if above is not None else str(task.reply_id or task.task_id)
        parent = f"{caller}#{label}" + (f", {above.chain.removeprefix('called by ')}"
                                        if above is not None else "")
        if how != "relayed":
            call = Child(next(self.direct.ids), task.peer, ex_id, key, task.task_id, child,
                         name, f"{label}.{child}", f"called by {parent}",
                         tuple(platforms) or ("*",), threads, retries, timeout, task.dist,
                         task.depth + 1, list(frames), how)
            if self.direct.place(call, time.monotonic()):
                return
        self.direct.relay(task.peer, ex_id, key, child, task.task_id)
        self._send(task.peer, m.Call(task.task_id, child, name, platforms, threads,
                                     retries, timeout, outputs, task.depth + 1,
                                     parent if task.task_id >= FIRST_ID else "",
                                     frames=tuple(frames)))

    def _relay(self, child: Child) -> None:
        """A call placed here goes through its Main after all (it was handed back)."""
        self.direct.relay(child.main, child.ex_id, child.key, child.number, child.parent)
        self._send(child.main, m.Call(child.parent, child.number, child.name,
                                      list(child.platforms), child.threads, child.retries,
                                      child.timeout, [], child.depth,
                                      child.chain.removeprefix("called by ")
                                      if child.parent >= FIRST_ID else "",
                                      frames=tuple(child.frames)))

    def _on_child_result(self, peer: bytes, msg: m.ChildResult) -> None:
        """A call of a task running here ended: to its executor (if the task still runs)."""
        for ex_id, ex in self.slots.executors.items():
            run = ex.runs[0] if ex.runs else None
            if (run is not None and ex.nests and run.task.peer == peer
                    and run.task.task_id == msg.parent):  # (only a task that made calls)
                self.direct.relay_answered(peer, ex_id, run.key, msg.child)
                if msg.status in ("ok", "error"):
                    self._to_parent(ex_id, run.key, msg.child, msg.status, msg.info,
                                    list(msg.frames))
                return

    def _note_isolation(self, kind: str) -> None:
        if kind == self._isolation:
            return
        self._isolation = kind
        if kind == "overlay":
            log.info("task writes are private: each executor sees its environment through an "
                     "overlay in a mount namespace of its own")
        else:
            log.warning("no mount namespaces here: each task works in a private copy of its "
                        "environment, but a write through a module's __file__ reaches the "
                        "shared tree")

    def _executor_died(self, ex_id: int) -> list[Action]:
        proc = self.procs.get(ex_id)
        if proc is None:
            return []
        code = proc.poll()
        head = self.slots.running(ex_id)
        if head is not None:
            peer_log.warning("executor %d died (exit %s) running task %d; replacing it",
                             proc.pid, code, head.task.task_id)
        killed = self._memory_kills.pop(ex_id, None)
        if killed is not None:
            info = ErrorRecord("distrib.WorkerCrashed", f"stopped: {killed[0]}").to_wire()
            if killed[1]:
                info["memory_limit"] = str(killed[1])  # (the Main retries only above it)
            return self.slots.executor_died(ex_id, info)
        record = ErrorRecord("distrib.WorkerCrashed", f"executor process {proc.pid} on worker "
                             f"{self.name} died (exit code {code})")
        return self.slots.executor_died(ex_id, record.to_wire())

    def _forward_output(self, ex_id: int, stream: int, text: str) -> None:
        head = self.slots.running(ex_id)
        main = self.mains.get(head.task.peer) if head is not None else None
        if head is not None and main is not None and main.forward_output:
            for i in range(0, len(text), OUTPUT_CHUNK):
                self._send(main.peer, m.Output(head.task.task_id, stream,
                                               text[i:i + OUTPUT_CHUNK]))

    # --- calls this worker places itself (``_direct``) ------------------------------------------

    def _delegate_hello(self, main_peer: bytes) -> m.Hello | None:
        """The Hello this worker says to another one to send it calls of a Main."""
        main = self.mains.get(main_peer)
        if main is None or main.hello is None:
            return None
        return dataclasses.replace(main.hello, name=f"worker {self.name} for {main.name}",
                                   pid=os.getpid(), shm_probe=[], warm=0, delegate=main.key)

    def _run_here(self, child: Child) -> None:
        main = self.mains.get(child.main)
        if main is not None:
            self._apply(self.slots.submit(QueuedTask(
                child.main, child.cid, child.dist, child.threads, child.timeout, child.frames,
                main.context, main.env, depth=child.depth, reply=LOCAL, reply_id=child.cid)))

    def _cancel_here(self, child: Child) -> None:
        self._apply(self.slots.cancel(child.main, child.cid, time.monotonic()))

    def _runs_here(self, child: Child) -> bool:
        return any(ex.runs and ex.runs[0].task.reply == LOCAL
                   and ex.runs[0].task.task_id == child.cid
                   for ex in self.slots.executors.values())

    def _load_here(self) -> float:
        """Slots busy here, and tasks waiting for one, per slot."""
        return (sum(self.slots.held().values()) + self.slots.waiting()) / max(1, self.slots.slots)

    def _lends_here(self, main: bytes, threads: int) -> bool:
        return not self.slots.paused and self.slots.offered(main) >= threads

    def _parent_runs(self, ex_id: int, key: int) -> bool:
        run = self.slots.running(ex_id)
        return run is not None and run.key == key

    def _deliver(self, child: Child, status: str, info: dict[str, str],
                 frames: list[Any]) -> None:
        """How a call this worker placed ended: to its parent, if that still runs."""
        self._to_parent(child.ex_id, child.key, child.number, status, info, frames)

    def _to_parent(self, ex_id: int, key: int, number: int, status: str,
                   info: dict[str, str], frames: list[Any]) -> None:
        """How call ``number`` of task ``key`` ended: to its executor, if it still runs the
        task (a failed write is the executor's death)."""
        proc = self.procs.get(ex_id)
        if proc is None or not self._parent_runs(ex_id, key):
            return
        try:
            proc.child(key, number, status, info, frames)
        except OSError:
            self._apply(self._executor_died(ex_id))

    # --- results and timers ------------------------------------------------------------------

    def _report(self, task: QueuedTask, outcome: Outcome, info: dict[str, str],
                frames: list[Any], shm: dict[str, int] | None = None) -> None:
        if outcome is Outcome.TIMEOUT:
            peer_log.info("task %d ran past its timeout; stopped it", task.task_id)
        if shm and (outcome is not Outcome.OK or task.peer not in self.mains):
            _shm.remove(list(shm))  # a result no one will read
            shm = None
        if task.reply == LOCAL:
            self.direct.outcome(task.reply_id, outcome, info, frames)
        elif task.reply:
            if self._delegated.pop((task.reply, task.reply_id), None) is not None:
                self._outbox.add(task.reply, task.reply_id, outcome, info, frames, None)
        elif task.peer in self.mains:
            self._outbox.add(task.peer, task.task_id, outcome, info, frames, shm)

    def _watch_memory(self) -> None:
        """Stop executors over the owner's memory limits (their tasks crash, saying so)."""
        running: dict[int, int] = {}
        idle: dict[int, int] = {}
        for ex_id, proc in self.procs.items():
            ex = self.slots.executors.get(ex_id)
            if proc.pid and ex_id not in self._memory_kills:
                (running if ex is not None and ex.runs else idle)[ex_id] = proc.pid
        templates = tuple(t.proc.pid for t in self.templates.values())
        for ex_id, why, limit in self.memory.over(running, idle, self.name, templates):
            peer_log.warning("stopping executor %d: %s", self.procs[ex_id].pid, why)
            self._memory_kills[ex_id] = (why, limit)
            self.procs[ex_id].signal_kill()  # (its death is then seen as any other)

    def _tick(self, now: float) -> None:
        if self.policy_file is not None:
            self._reload_policy()
        self._check_lending()
        if self.memory.limit:
            self._watch_memory()
        for ex_id, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self._apply(self._executor_died(ex_id))
        if self._forking:
            self._reap_strays()
            self._keep_zygote()
        for pid in list(self._shm_sweep):
            if any(x.pid == pid and x.shm for x in self.mains.values()):
                self._shm_sweep.discard(pid)  # it came back
            elif not exists(pid):
                _shm.remove_of(pid)
                self._shm_sweep.discard(pid)
        used = {ex.key for ex in self.slots.executors.values()}
        for key, template in list(self.templates.items()):  # (their memory goes back)
            if key not in used and now - template.last_used > self.slots.idle_after:
                self._drop_template(key)
        self._apply(self.slots.tick(now))
        if self._stuck and now - self._stuck_since > STUCK_HAND_BACK and self.slots.waiting():
            # Nothing queued here can start: it goes back to its Mains (another worker may
            # run it; if none can, its Main says NestedDeadlock).
            log.info("every slot is held by a task waiting for its calls: %d queued task(s) "
                     "go back to their Mains", self.slots.waiting())
            self._apply(self.slots.hand_back())
        self.dists.tick(now)
        self.direct.tick(now, self.slots.stuck())
        for peer in self.mains.silent(now, self.lost_after):
            self._drop_main(peer, f"was silent for {self.lost_after:.0f} s")
        for peer in self.mains:
            self._send(peer, m.Heartbeat())
        if self.mains and now - self._served_logged > SERVED_LOG_EVERY:
            self._served_logged = now
            self._log_served()
        if self.gate.reload():
            self._quotas_changed()
        if self.exit_with_parent is not None and os.getppid() != self.exit_with_parent:
            log.info("parent process %d is gone; stopping", self.exit_with_parent)
            self._stop = True

    def _quotas_changed(self) -> None:
        """The authorized keys were read again: each Main's quota is its key's now."""
        for peer, main in self.mains.items():
            if main.account:
                self._send(peer, self._worker_state(peer))  # (its Main's quota, as it stands)
                continue
            before = self.slots.offered(peer), self.slots.weights.get(peer, 1.0)
            quota = self.gate.quota(main.key)
            self._apply(self.slots.set_quota(peer, quota.slots, quota.priority))
            if (self.slots.offered(peer), self.slots.weights.get(peer, 1.0)) != before:
                log.info("Main %s: %s", main.name, str(quota) or "no quota")
                self._send(peer, self._worker_state(peer))

    def served(self) -> list[dict[str, Any]]:
        """Each Main served: its name, key (the first 8 characters), the slots its tasks
        hold, its tasks waiting here, and its quota."""
        held = self.slots.held()
        return [{"name": main.name, "key": main.key[:8], "held": held.get(peer, 0),
                 "queued": self.slots.waiting(peer), "quota": str(self.gate.quota(main.key))}
                for peer, main in self.mains.items()]

    def _log_served(self) -> None:
        log.info("serving %s", "; ".join(
            f"Main {x['name']}{' (key ' + x['key'] + '...)' if x['key'] else ''}: "
            f"{x['held']} slot(s), {x['queued']} waiting" for x in self.served()))

    def _measure_disk(self) -> dict[str, Any]:
        """(in the disk-use thread) What the store and the built environments take."""
        envs_built, envs_bytes = self.envs.disk_use()
        return {"workspaces_cached": sum(1 for _ in self.dists.store.envs.glob("[!.]*")),
                "workspaces_bytes": self.dists.store.usage(),
                "envs_cached": envs_built, "envs_bytes": envs_bytes}

    def status(self) -> dict[str, Any]:
        """Facts, load and counters, as ``distrib status`` and tests read them. Disk use is
        as last measured (``disk_age_s`` ago; none before the first measure ends)."""
        disk, disk_age = self.disk_use.get()
        state, why = self._effective_state()
        return {
            "name": self.name,
            "worker_id": self.worker_id,
            "address": self.address,
            "platform": _facts.platform_tag(),
            "python": _facts.python_version(),
            "pid": os.getpid(),
            "slots": self.slots.slots,
            "busy": self.slots.busy,
            "parked": sum(ex.parked for ex in self.slots.executors.values()),
            "queued": self.slots.waiting(),
            "mains": [x.name for x in self.mains.values()],
            "held": {self.mains[peer].name: n for peer, n in self.slots.held().items()
                     if peer in self.mains},
            "executors": [proc.pid for proc in self.procs.values() if proc.pid],
            "templates": [t.proc.pid for t in self.templates.values()],
            "public_key": self.key.public if self.key else None,
            "blobs_received": self.dists.blobs_received,
            "dropped": self.dropped,
            "reruns": self.reruns,
            "dropped_connections": self.gate.dropped_connections,
            "pythons": self.envs.versions(),
            "state": state,
            "why": why,
            "policy": self.policy.describe(),
            "quotas": {self.mains[peer].name: limit for peer, limit in self.slots.limits.items()
                       if peer in self.mains},
            "objects": self.objects.held(),
            "served": self.served(),
            **(disk or {}),
            "disk_age_s": round(disk_age, 1) if disk is not None else None,
            **self.slots.counters,
            **self.objects.counters,
            **self.direct.status(),
            **self.envs.counters,
        }

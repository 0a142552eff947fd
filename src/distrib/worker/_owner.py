"""The owner's side of a worker: their word on the control socket (pause, resume, drain), the
policy file read again as it changes (or on SIGHUP), and the lending hours and load.

``OwnerState`` decides (pure: events and the time in, what changed out); ``Owner`` reads the
control socket, the policy file and the machine's load, and carries out what it decided: what
Mains are told reaches the core as its ``OwnerStateChanged`` event (the core hands tasks back).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

from msgspec import Struct, structs

from distrib._errors import ConfigError
from distrib._logs import RateLimited
from distrib.worker import _events, _policy
from distrib.worker._control import COMMANDS, REFUSED, ControlSocket, reply
from distrib.worker._core import Core
from distrib.worker._events import Action, OwnerWord, Resize
from distrib.worker._executors import Executors
from distrib.worker._lending import Lending
from distrib.worker._memory import MemoryWatch
from distrib.worker._policy import Policy

log = logging.getLogger("distrib.worker")
peer_log = RateLimited(log)  # (refused control clients: what a task can trigger)
_REFUSED_KEPT = 1024  # refused pids remembered, so that each is logged once

SERVING: OwnerWord = "serving"
PAUSED: OwnerWord = "paused"
DRAINING: OwnerWord = "draining"
_WORDS: dict[str, OwnerWord] = {"pause": PAUSED, "resume": SERVING, "drain": DRAINING}
_ASKED: dict[str, str] = {
    PAUSED: "paused: no new tasks; queued ones go back to their Mains",
    SERVING: "resumed",
    DRAINING: "draining: no new tasks, queued ones go back to their Mains, and it leaves when "
              "its running tasks are done"}


class Change(Struct, frozen=True):
    """What an event changed, for the daemon to carry out (the defaults: nothing)."""

    refused: str = ""  # why the owner's command is not taken (their reply)
    word: str = ""  # the owner's new word, to log
    told: tuple[OwnerWord, str] | None = None  # what Mains hear now: serving, paused or
    # draining, and why ("": the owner's word)
    lends_again: bool = False  # serving again after a pause that was not the owner's word
    hand_back: bool = False  # lending stopped: queued tasks go back to their Mains
    vacate: bool = False  # and running ones are stopped too (``when_idle = "vacate"``)


class OwnerState:
    """The owner's word (serving, paused, draining), why the machine is not lent now (its
    hours, its owner's load) and what Mains were last told."""

    def __init__(self, when_idle: str | None, now: float) -> None:
        self.word: OwnerWord = SERVING  # the owner's word
        self.away = ""  # why the machine is not lent now, "" if it is
        self.told: tuple[OwnerWord, str] = (SERVING, "")  # the state Mains last heard, and why
        self.since = now  # when that last changed
        self.when_idle = when_idle  # the policy's: "vacate" stops running tasks when away

    def effective(self) -> tuple[OwnerWord, str]:
        """What Mains are told: serving, paused or draining, and why ("": the owner's word)."""
        if self.word == SERVING and self.away:
            return PAUSED, self.away
        return self.word, ""

    @property
    def paused(self) -> bool:
        """No new tasks start (the last state Mains heard is not serving)."""
        return self.told[0] != SERVING

    def command(self, command: str, now: float) -> Change:
        """The owner said ``pause``, ``resume`` or ``drain``."""
        if self.word == DRAINING and command in ("pause", "resume"):
            return Change(refused="draining: it leaves when its running tasks are done; start "
                                  "it again afterwards")
        word = _WORDS[command]
        if word == self.word:
            return Change()
        self.word = word
        return structs.replace(self._update(now), word=word)

    def away_changed(self, away: str, now: float) -> Change:
        """The lending hours or the owner's load say the machine is lent ("") or not (why)."""
        if away == self.away:
            return Change()
        self.away = away
        return self._update(now)

    def policy_changed(self, when_idle: str | None, now: float) -> Change:
        """The policy changed: what a later pause for the owner's hours or load does."""
        self.when_idle = when_idle
        return Change()  # (what Mains hear does not depend on it)

    @property
    def draining(self) -> bool:
        """The daemon leaves once no task runs any longer."""
        return self.word == DRAINING

    def _update(self, now: float) -> Change:
        told = self.effective()
        if told == self.told:
            return Change()
        was_serving, was_why = self.told[0] == SERVING, bool(self.told[1])
        self.told, self.since = told, now
        stops = told[0] != SERVING and was_serving
        return Change(told=told, lends_again=told[0] == SERVING and was_why, hand_back=stops,
                      vacate=stops and bool(told[1]) and self.when_idle == "vacate")


class Owner:
    """Reads the owner's word, policy and hours, and carries out what ``OwnerState`` says."""

    def __init__(self, name: str, state: OwnerState, cache_dir: Path, policy: Policy,
                 flags: Policy, policy_file: Path | None, core: Core, executors: Executors,
                 memory: MemoryWatch, apply: Callable[[list[Action]], None],
                 tell_all: Callable[[], None]) -> None:
        self.name = name
        self.policy = policy
        self.policy_file = policy_file
        self._flags = flags  # what the flags said: the file's settings go over these
        self._policy_seen: tuple[int, int, int] | None = None  # the file as last read
        self._settling: tuple[int, int, int] | None = None  # a new file, seen at the last tick
        if policy_file is not None:
            self._policy_seen = self._policy_signature()
        self.lending = Lending(policy)
        self.state = state
        self.control = ControlSocket(cache_dir)
        self._refused: set[int] = set()  # control clients refused (and logged) so far
        self.core = core
        self.executors = executors
        self.memory = memory
        self.apply = apply
        self.tell_all = tell_all
        self.on_connect: Callable[[tuple[tuple[str, str], ...]], None] | None = None  # (the
        # Mains to dial changed: set by the daemon)
        self.on_relay: Callable[[tuple[str, str] | None], None] | None = None  # (likewise,
        # the relay it is reached through)
        self.on_stop: Callable[[], None] | None = None  # (the owner said stop: the daemon's)
        self.name_memory_settings()

    def on_sighup(self) -> None:
        self._policy_seen = None  # (read at the next tick)

    def tick(self) -> None:
        if self.policy_file is not None:
            self._reload_policy()
        self.carry_out(self.state.away_changed(self.lending.check(), time.monotonic()))

    def on_control(self) -> None:
        accepted = self.control.accept()
        if accepted is None:
            return
        conn, command, (pid, why) = accepted
        if why:
            self._refuse(conn, pid, why)
            return
        if command not in COMMANDS:
            reply(conn, f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}")
            return
        if command == "stop" and self.on_stop is not None:
            log.warning("worker %s, as its owner asked: stopping", self.name)
            self.on_stop()
            reply(conn, f"stopping: {self.core.busy} slots busy (their tasks are stopped, "
                        "and their Mains told)")
            return
        if command != "state":
            change = self.state.command(command, time.monotonic())
            if change.refused:
                reply(conn, change.refused)
                return
            self.carry_out(change)
        reply(conn, f"{self.state.word}: {self.core.busy} slots busy, "
                    f"{self.core.waiting()} tasks waiting")

    def _refuse(self, conn: socket.socket, pid: int, why: str) -> None:
        """A client that may not command this daemon (a task, say): nothing changes, it is
        told so, and the log names it once."""
        if pid not in self._refused:
            if len(self._refused) >= _REFUSED_KEPT:
                self._refused.clear()
            self._refused.add(pid)
            peer_log.warning("worker %s refused a command on its control socket from process "
                             "%d: %s; only its owner, from outside the worker, may pause, "
                             "resume or drain it", self.name, pid, why)
        reply(conn, f"{REFUSED}{why}; only the worker's owner, from outside the worker, may "
                    "command it")

    def carry_out(self, change: Change) -> None:
        """Log the change, start or stop lending as it says (the core hands back what it
        must), and tell the Mains."""
        if change.word:
            log.warning("worker %s, as its owner asked: %s", self.name, _ASKED[change.word])
        if change.told is None:
            return
        if change.told[1]:
            log.warning("worker %s stops lending: %s", self.name, change.told[1])
        elif change.lends_again:  # (after the owner's word, that is logged)
            log.warning("worker %s lends again", self.name)
        self.apply(self.core.handle(_events.OwnerStateChanged(change.told[0], change.vacate),
                                    time.monotonic()))
        self.tell_all()

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
        # A file changed within the last second may still be being written (an editor that
        # truncates, then writes: read in between, it is empty and says "no settings"). Read
        # it once it has stayed the same from one tick to the next, and again at later ticks
        # until it is a second old.
        fresh = time.time_ns() - seen[0] <= 1_000_000_000
        if fresh and seen != self._settling:
            self._settling = seen
            return
        self._settling = None
        self._policy_seen = None if fresh else seen
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

    def name_memory_settings(self) -> None:
        """A limit the policy file set (not the flag's) is named as the file's key (memory
        limits, and a task's disk limit)."""
        policy, flags, in_file = self.policy, self._flags, f" in its policy file {self.policy_file}"
        self.memory.per_task_setting = "--max-task-memory" \
            if policy.max_task_memory == flags.max_task_memory else f"max_task_memory{in_file}"
        self.memory.total_setting = "--max-memory" if policy.max_memory == flags.max_memory \
            else f"max_memory{in_file}"
        if self.executors.disk is not None:
            self.executors.disk.limits.per_task_setting = "--max-task-disk" \
                if policy.max_task_disk == flags.max_task_disk else f"max_task_disk{in_file}"

    def _policy_signature(self) -> tuple[int, int, int]:
        assert self.policy_file is not None
        st = self.policy_file.stat()
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _apply_policy(self, policy: Policy) -> None:
        old, self.policy = self.policy, policy
        self.lending.policy = policy
        self.carry_out(self.state.policy_changed(policy.when_idle, time.monotonic()))
        self.memory.per_task, self.memory.total = policy.max_task_memory, policy.max_memory
        if self.executors.disk is not None:
            self.executors.disk.limits.per_task = policy.max_task_disk
        self.name_memory_settings()
        if policy.nice != old.nice:
            self.executors.renice(policy.nice)
        if policy.threads != old.threads:
            self.apply(self.core.handle(Resize(policy.threads), time.monotonic()))
        if policy.connect != old.connect and self.on_connect is not None:
            self.on_connect(policy.connect)
        if policy.relay != old.relay and self.on_relay is not None:
            self.on_relay(policy.relay)
        self.tell_all()  # (slots and memory limit, as each Main may use them)

"""Executor processes, seen from the daemon: start, send a task, read what comes back, kill.

An executor imports one environment once and then runs its tasks one by one, talking to the
daemon over a socketpair whose file descriptor the daemon polls. It is started one of two ways:

- forked from a *template*: one process per environment (distribution, context and thread
  count) that imported the workspace once and forks an executor for each socket the daemon
  sends it, so twenty slots cost one import, not twenty. The daemon is a subreaper: executors
  are forked twice over and adopted by it, so it waits for them as for its own children;
- spawned as a fresh interpreter (``subprocess``, never a bare fork of the threaded daemon):
  while the template is still importing, when it cannot fork safely (its import started
  threads), or where there is no ``fork``.

An executor exists (its pipe is open, tasks can be handed to it) before its process does; it
is *attached* to one when its template is ready or it is spawned.

In a sandbox (``_sandbox``), a template and the executors it forks share one, of one Main's
environment: they are in its PID namespace, where orphans go to its process 1 (the template),
not to the daemon, and the pid the template says is not the daemon's. So each forked executor
says a byte first on its own socket, which the kernel sends with its pid as the daemon knows
it (``SO_PASSCRED``); the daemon signals and waits for that pid (``Adopted``, which also
takes a process it cannot reap).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from msgspec import Struct, field, structs

from distrib._process import Entry, exists, kill_trees, wait_exit
from distrib._scratch import remove_later
from distrib.wire._pipe import NICE_VAR, READ_BUDGET, THREAD_VARS, Pipe
from distrib.wire._pipe_messages import ChildOutcome, Context, PipeMessage, Run, Skip
from distrib.worker import _sandbox
from distrib.worker._ahead import Zygote, _python
from distrib.worker._events import EnvKey
from distrib.worker._sandbox import Box, Boxed, Sandboxes

log = logging.getLogger("distrib.worker")

# Seconds a template may leave a fork unanswered; its executors are then spawned instead.
FORK_TIMEOUT = float(os.environ.get("DISTRIB_FORK_TIMEOUT", "10"))


class Adopted:
    """An executor forked by a template and adopted by this process: what ``Popen`` offers."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                if exists(self.pid):
                    return None  # not adopted yet: its intermediate parent is exiting
                self.returncode = -1  # (reaped elsewhere: gone all the same)
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.001)  # (wait_exit calls this once the pidfd said it exited)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)


class ExecutorProcess(Struct, eq=False):
    """One executor and the daemon's end of its socketpair; ``proc`` is None until attached."""

    pipe: Pipe
    scratch: Path  # where it keeps its task layers, as <pid>-<n>
    theirs: socket.socket | None = None  # the executor's end, until a process takes it
    proc: subprocess.Popen[bytes] | Adopted | Boxed | None = None
    # Other folders its tasks write to (a private /tmp, say, as the daemon reaches it), counted
    # with its ``<pid>-*`` folders against the owner's disk limits, and removed with them
    private: tuple[Path, ...] = ()
    # Forked in a sandbox: until when the first byte it says, which carries its pid as this
    # daemon knows it, may take (0: none awaited)
    pid_due: float = 0.0
    ended: float = 0.0  # when the daemon first saw it exit (its last words are read then)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def attach(self, pid: int) -> None:
        """It is process ``pid``, forked from its template and adopted by this daemon."""
        self.proc, self.pid_due = Adopted(pid), 0.0
        if self.theirs is not None:
            self.theirs.close()
            self.theirs = None

    def said_pid(self) -> bool | None:
        """Read the byte a sandboxed executor says first and attach it to the pid it came
        with (True); None if it has not come yet; False if something else came."""
        sock = self.pipe.sock
        try:
            data, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(12), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            log.warning("a sandboxed executor did not say its pid: %s", exc)
            return False
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and data == b"P":
                self.attach(int(struct.unpack("<iII", value[:12])[0]))
                return True
        return False

    def fileno(self) -> int:
        return self.pipe.fileno()

    def poll(self) -> int | None:
        """Its exit code once it ended; None while it runs (or is not started yet)."""
        return self.proc.poll() if self.proc is not None else None

    def run(self, tasks: list[Run]) -> None:
        """Hand tasks to this executor, which runs them in order."""
        self.pipe.post(tasks)

    def renew(self) -> None:
        """A new socketpair for a process not attached yet: a template that did not answer
        may still fork an executor holding the old one, which then sees its end closed and
        exits instead of reading this executor's tasks."""
        self.pipe.close()
        if self.theirs is not None:
            self.theirs.close()
        ours, self.theirs = socket.socketpair()
        self.pipe = Pipe(ours)

    def child(self, run_id: int, child: int, status: str, info: dict[str, str],
              frames: list[Any]) -> None:
        """How call ``child`` of the running task ``run_id`` ended."""
        self.pipe.post([ChildOutcome(run_id, child, status, info, tuple(frames))])

    def skip(self, run_id: int) -> None:
        """Ask the executor to drop task ``run_id`` if it has not started it."""
        self.pipe.post([Skip(run_id)])

    def read(self, budget: int | None = READ_BUDGET) -> PipeMessage | None:
        """Its next message once all of it has come, reading at most about ``budget`` bytes
        (0: only what was read ahead; None: all that came); None until then: never waits,
        whatever its task sends. ``EOFError`` if it died, ``PipeError`` if it is malformed."""
        return self.pipe.receive(budget)

    def signal_kill(self) -> None:
        """SIGKILL it and every process its tasks started (they may have left its tree only
        when it ended: then this daemon, their subreaper, adopted them; see ``Executors``)."""
        if self.proc is not None and self.proc.poll() is None:
            kill_trees([self.proc.pid])

    def kill(self) -> None:
        """Stop the process now and reap it."""
        self.signal_kill()
        self.pipe.close()
        if self.theirs is not None:
            self.theirs.close()
            self.theirs = None
        if self.proc is None:
            return
        try:
            wait_exit(self.proc, 5)
        except subprocess.TimeoutExpired:
            log.warning("executor %d did not exit after SIGKILL", self.proc.pid)
        for layer in [*self.scratch.glob(f"{self.proc.pid}-*"), *self.private]:
            remove_later(layer)  # (not on the daemon's loop: it may hold many files)


class Recipe(Struct, frozen=True):
    """How to start processes of one environment: its tree, main script, interpreter, the
    Main's argv and variables, and the thread count of its tasks."""

    threads: int
    env: Path
    main: str | None
    runs: Path
    argv: list[str]
    forwarded: dict[str, str]
    python: Path | None = None  # a built Python environment's interpreter (default: ours)
    preload: list[str] = field(default_factory=list)  # modules a template imports ahead
    max_payload: int = 0  # bytes a result may pickle to (the Main's setting); 0: no limit
    nice: int = 0  # the niceness executors run at (the owner's --nice)
    sandboxes: Sandboxes | None = None  # how to build their sandbox (None: none)
    box: Box | None = None  # what it holds (its scratch: the folder to make one's in)

    def variables(self) -> dict[str, str]:
        """What its processes' environment has besides the daemon's."""
        out = dict.fromkeys(THREAD_VARS, str(self.threads))
        out[NICE_VAR] = str(self.nice)  # (the child applies it first thing, and drops it)
        return out

    def arguments(self) -> list[str]:
        """Its processes' arguments after their socket's descriptor."""
        venv = str(self.python.parent.parent) if self.python else ""
        return [str(self.env), self.main or "", str(self.runs), venv]

    def popen(self, mode: list[str],
              theirs: socket.socket) -> subprocess.Popen[bytes] | Boxed:
        python = self.python or Path(sys.executable)
        environ = {**os.environ, **self.variables()}
        if self.sandboxes is None or self.box is None:
            return _python(python, [*mode, str(theirs.fileno()), *self.arguments()], theirs,
                           environ, self.env)
        box = structs.replace(self.box, scratch=_sandbox.scratch(self.box.scratch))
        arguments = self.arguments()
        arguments[2] = str(box.scratch)  # (its task layers: in the sandbox's own folder)
        return self.sandboxes.start(
            box, [str(python), "-P", "-m", "distrib.executor._tasks", *mode,
                  str(theirs.fileno()), *arguments], environ, (theirs.fileno(),), self.env)


def started(executors: list[ExecutorProcess], templates: list[Template],
            table: dict[int, Entry]) -> tuple[set[int], dict[int, int]]:
    """The pids of ``executors`` and ``templates`` (and of their sandboxes' launchers), and
    each sandboxed template's session by its pid (read in ``table``): what no sweep kills."""
    procs = [ex.proc for ex in executors] + [t.proc for t in templates]
    ours = {p.pid for p in procs if p is not None} | {
        p.launcher.pid for p in procs if isinstance(p, Boxed)}
    boxed = {t.proc.pid: table[t.proc.pid].session for t in templates
             if isinstance(t.proc, Boxed) and t.proc.pid in table}
    return ours, boxed


def _renewed(executors: list[ExecutorProcess]) -> list[ExecutorProcess]:
    """``executors``, each with a new socket (a template asked for them may yet fork one
    holding the old one: it then sees its end closed, and exits)."""
    for ex in executors:
        ex.renew()
    return executors


def executor(recipe: Recipe) -> ExecutorProcess:
    """A new executor, not attached to a process yet."""
    ours, theirs = socket.socketpair()
    return ExecutorProcess(Pipe(ours), recipe.runs, theirs)


def spawn(recipe: Recipe, ex: ExecutorProcess) -> None:
    """Attach ``ex`` to a fresh interpreter that imports the environment itself; its first
    message is the Main's context (an environment of any size fits there)."""
    assert ex.theirs is not None
    try:
        ex.proc = recipe.popen([], ex.theirs)
    finally:
        ex.theirs.close()
        ex.theirs = None
    if isinstance(ex.proc, Boxed):  # (process 1 of its sandbox)
        ex.private = (ex.proc.scratch / _sandbox.layers(1),)
    ex.pipe.post([Context(recipe.argv, recipe.forwarded, [], recipe.max_payload)])


class Template(Struct, eq=False):
    """A process that imported one environment and forks executors of it."""

    proc: subprocess.Popen[bytes] | Boxed
    control: Pipe
    recipe: Recipe
    ready: bool = False
    waiting: list[int] = field(default_factory=list)  # executors to fork once it is ready
    last_used: float = 0.0
    asked: list[ExecutorProcess] = field(default_factory=list)  # to fork, not answered yet
    asked_at: float = 0.0  # when it was asked first, or last answered, since it had none
    answer: bytearray = field(default_factory=bytearray)  # the first bytes of the next one

    @classmethod
    def start(cls, recipe: Recipe, now: float, zygote: Zygote | None = None) -> Template:
        """Start the template of ``recipe`` (in ``zygote``, when given and it can be)."""
        ours, theirs = socket.socketpair()
        try:
            proc: subprocess.Popen[bytes] | Boxed | None = None
            if zygote is not None:
                # (not where the recipe wants another interpreter, or a sandbox)
                proc = None if recipe.python is not None or recipe.box is not None else \
                    zygote.become(["template"], recipe.variables(), recipe.env,
                                  recipe.arguments(), theirs)
            if proc is None:
                if zygote is not None:
                    zygote.kill()
                proc = recipe.popen(["template"], theirs)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        template = cls(proc, Pipe(ours), recipe, last_used=now)
        # (without waiting: a context larger than the socket takes, and an interpreter held
        # before it reads it, by a .pth file of the Main's own environment, say; the rest
        # goes at the next ticks)
        template.control.post([Context(recipe.argv, recipe.forwarded, recipe.preload,
                                       recipe.max_payload)])
        return template

    def fileno(self) -> int:
        return self.control.fileno()

    def send_rest(self) -> None:
        """Send more of its context, if its socket did not take all of it at once (a failure
        is its death, which reading its socket shows)."""
        try:
            self.control.flush()
        except OSError:
            pass

    def ask(self, executors: list[ExecutorProcess], now: float) -> list[ExecutorProcess]:
        """Ask for ``executors`` to be forked, without waiting for the answers (``answered``
        reads them as they come: the Main's script ran in this process and may hold them);
        returns those it could not be asked for, with new sockets."""
        assert self.ready and all(ex.theirs is not None for ex in executors)
        boxed = isinstance(self.proc, Boxed)
        for i, ex in enumerate(executors):
            assert ex.theirs is not None
            if boxed:  # (set before the executor can say its first byte)
                ex.pipe.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            try:
                socket.send_fds(self.control.sock, [b"F"], [ex.theirs.fileno()],
                                socket.MSG_DONTWAIT)
            except OSError as exc:  # (full: a template that does not read)
                log.warning("template %d did not take a fork request: %s", self.proc.pid, exc)
                return _renewed(executors[i:])
            if not self.asked:
                self.asked_at = now
            self.asked.append(ex)
        return []

    def answered(self, now: float) -> list[ExecutorProcess]:
        """Read the answers that have come, and attach the executors forked (a sandboxed
        one once it says its pid: ``pid_due``); returns those it did not fork, with new
        sockets (all it was asked for, if it is gone)."""
        try:
            data = self.control.sock.recv(8 * len(self.asked) - len(self.answer),
                                          socket.MSG_DONTWAIT)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            log.warning("template %d ended before it forked the executors asked of it",
                        self.proc.pid)
            return self.give_up()
        self.answer += data
        failed = []
        while len(self.answer) >= 8:
            pid = struct.unpack_from("<q", self.answer)[0]
            del self.answer[:8]
            ex = self.asked.pop(0)
            self.asked_at = now
            if pid <= 0:
                failed.append(ex)
            elif isinstance(self.proc, Boxed):  # (its layers: by its pid in there)
                ex.private = (self.proc.scratch / _sandbox.layers(pid),)
                ex.pid_due = now + FORK_TIMEOUT
            else:
                ex.attach(pid)
        return _renewed(failed)

    def overdue(self, now: float) -> bool:
        """Whether it has left a fork unanswered for ``FORK_TIMEOUT`` (it is logged)."""
        if not self.asked or now - self.asked_at <= FORK_TIMEOUT:
            return False
        log.warning("template %d did not answer a fork in %.0f s", self.proc.pid, FORK_TIMEOUT)
        return True

    def give_up(self) -> list[ExecutorProcess]:
        """The executors asked for and not answered, with new sockets: no answer is read
        from now on."""
        asked, self.asked = self.asked, []
        return _renewed(asked)

    def kill(self) -> None:
        if self.proc.poll() is None:  # (with what the Main's script started as it imported)
            kill_trees([self.proc.pid])
        self.control.close()
        try:
            wait_exit(self.proc, 5)
        except subprocess.TimeoutExpired:
            log.warning("template %d did not exit after SIGKILL", self.proc.pid)
        for layer in self.recipe.runs.glob(f"{self.proc.pid}-*"):
            remove_later(layer)  # (not on the daemon's loop: it may hold many files)


# Templates no executor uses, kept for a next run of their script: each holds what the script
# imported, and a script edited between runs is a new distribution (a new template) each time.
MAX_IDLE_TEMPLATES = 3


def idle_templates(templates: dict[EnvKey, Template], used: set[EnvKey], connected: set[str],
                   now: float, idle_after: float) -> list[EnvKey]:
    """The templates to stop, of those no executor ``used``: those that waited ``idle_after``,
    at once the sandboxed ones of Mains no longer ``connected`` (their contexts: a sandbox
    is one Main's, so no later Main could use one, and each holds what its Main's script
    imported, hundreds of MB with a large library, for nothing), and the oldest of the
    others past ``MAX_IDLE_TEMPLATES``."""
    out: list[EnvKey] = []
    kept: list[tuple[float, EnvKey]] = []
    for key, template in templates.items():
        if key in used:
            continue
        if now - template.last_used > idle_after or (
                template.recipe.box is not None and key.context not in connected):
            out.append(key)
        else:
            kept.append((template.last_used, key))
    kept.sort(key=lambda pair: pair[0])
    return out + [key for _, key in kept[:max(0, len(kept) - MAX_IDLE_TEMPLATES)]]

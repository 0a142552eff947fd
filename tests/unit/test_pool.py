"""A template that does not answer a fork (the Main's script ran in it, and may hold it): the
daemon does not wait for it, and the executors it was asked for get new sockets."""

from __future__ import annotations

import select
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import pytest

from distrib import _process
from distrib.wire._pipe import Pipe
from distrib.wire._pipe_messages import Skip
from distrib.worker import _pool
from distrib.worker._events import EnvKey, ExecutorDied
from distrib.worker._executors import Executors
from distrib.worker._memory import MemoryWatch
from distrib.worker._pool import ExecutorProcess, Recipe, Template


def test_an_unanswered_fork_leaves_the_late_executor_a_closed_socket(tmp_path: Path) -> None:
    daemon_end, template_end = socket.socketpair()
    silent = subprocess.Popen(["sleep", "60"])  # (a template that never answers)
    try:
        template = Template(silent, Pipe(daemon_end), cast(Recipe, None), ready=True)
        ours, theirs = socket.socketpair()
        ex = ExecutorProcess(Pipe(ours), tmp_path, theirs)
        assert template.ask([ex], 100.0) == []  # (asked: nothing waits for the answer)
        assert template.answered(101.0) == [] and template.asked == [ex]
        assert not template.overdue(100.0 + _pool.FORK_TIMEOUT)
        assert template.overdue(100.1 + _pool.FORK_TIMEOUT)
        assert template.give_up() == [ex] and not template.asked
        # The template got the socket and may still fork an executor holding it ...
        _, fds, _, _ = socket.recv_fds(template_end, 1, 1)
        late = socket.socket(fileno=fds[0])
        late.settimeout(30)
        # ... whose socket no longer leads anywhere: it reads the end and exits,
        assert late.recv(1) == b""
        # while the executor started instead gets a socket of its own.
        assert ex.theirs is not None and ex.theirs is not theirs
        ex.pipe.send(Skip(1))
        ex.theirs.settimeout(30)
        assert ex.theirs.recv(64)
        late.close()
        ex.kill()
    finally:
        silent.kill()
        silent.wait()
        template_end.close()
        daemon_end.close()


def test_answers_are_read_as_they_come_and_attach_their_executors(tmp_path: Path) -> None:
    daemon_end, template_end = socket.socketpair()
    template_proc = subprocess.Popen(["sleep", "60"])
    forked = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    executors = []
    try:
        template = Template(template_proc, Pipe(daemon_end), cast(Recipe, None), ready=True)
        for _ in range(3):
            ours, theirs = socket.socketpair()
            executors.append(ExecutorProcess(Pipe(ours), tmp_path, theirs))
        assert template.ask(executors, 0.0) == []
        for _ in range(3):
            socket.recv_fds(template_end, 1, 1)
        answers = b"".join(struct.pack("<q", p.pid) for p in forked) + struct.pack("<q", -1)
        template_end.sendall(answers[:5])  # (an answer's first bytes: none whole yet)
        assert template.answered(1.0) == [] and all(ex.proc is None for ex in executors)
        template_end.sendall(answers[5:])
        deadline = time.monotonic() + 30
        failed: list[ExecutorProcess] = []
        while template.asked:
            assert time.monotonic() < deadline, "the answers were not read"
            failed += template.answered(2.0)
        assert [ex.pid for ex in executors[:2]] == [p.pid for p in forked]
        assert failed == [executors[2]] and executors[2].theirs is not None  # (a new socket)
        assert not template.overdue(2.0 + 2 * _pool.FORK_TIMEOUT)  # (nothing left asked)
    finally:
        for proc in [template_proc, *forked]:
            proc.kill()
            proc.wait()
        for ex in executors:
            ex.pipe.close()
            if ex.theirs is not None:
                ex.theirs.close()
        template_end.close()
        daemon_end.close()


@contextmanager
def _with_a_template(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, core: object,
                     forking: bool) -> Iterator[tuple[Executors, ExecutorProcess, Template]]:
    """``Executors`` of ``core`` with executor 4 and a ready template (a sleeping process
    stands for it, and is killed after)."""
    monkeypatch.setattr(_process, "become_subreaper", lambda: forking)
    executors = Executors("w", tmp_path, 0, core,  # type: ignore[arg-type]
                          MemoryWatch(), lambda actions: None)
    daemon_end, template_end = socket.socketpair()
    ours, theirs = socket.socketpair()
    sleeper = subprocess.Popen(["sleep", "60"])
    ex = executors.procs[4] = ExecutorProcess(Pipe(ours), tmp_path, theirs)
    template = executors.forks.templates[EnvKey("d" * 64, 1)] = Template(
        sleeper, Pipe(daemon_end), Recipe(1, tmp_path, None, tmp_path, [], {}), ready=True)
    try:
        yield executors, ex, template
    finally:
        sleeper.kill()
        sleeper.wait()
        for sock in (daemon_end, template_end, ours, theirs, ex.pipe.sock, ex.theirs):
            if sock is not None:
                sock.close()


def test_executors_asked_of_a_template_that_is_stopped_are_dead(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # (its distribution replaced, say): no answer will come for them
    died: list[int] = []

    class Core:  # (what Executors hands the core, recorded)
        executors: dict[int, object] = {}

        def running(self, ex_id: int) -> None:
            return None

        def handle(self, event: object, now: float) -> list[object]:
            if isinstance(event, ExecutorDied):
                died.append(event.ex_id)
            return []

    with _with_a_template(monkeypatch, tmp_path, Core(), False) as (executors, ex, template):
        assert template.ask([ex], 0.0) == []
        executors.forks.drop(EnvKey("d" * 64, 1))
        assert died == [4] and not template.asked
        assert cast(subprocess.Popen[bytes], template.proc).wait(30) != 0  # (it was killed)


class _Core:
    """What Executors hands the core, recorded: the executors it took as dead."""

    def __init__(self) -> None:
        self.executors: dict[int, object] = {}
        self.died: list[int] = []

    def running(self, ex_id: int) -> None:
        return None

    def handle(self, event: object, now: float) -> list[object]:
        if isinstance(event, ExecutorDied):
            self.died.append(event.ex_id)
        return []


KEY = EnvKey("d" * 64, 1)


@contextmanager
def _a_template_that_died(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, core: object,
                          popen: object) -> Iterator[tuple[Executors, Template]]:
    """``Executors`` whose template of ``KEY`` died while it imported, executor 4 waiting for
    it; new templates start with ``popen`` (``Recipe.popen``'s stand-in)."""
    monkeypatch.setattr(Recipe, "popen", popen)
    with _with_a_template(monkeypatch, tmp_path, core, True) as (executors, ex, template):
        monkeypatch.setattr(executors.forks.ahead, "take", lambda now: None)
        template.ready, template.waiting = False, [4]
        dead = cast(subprocess.Popen[bytes], template.proc)
        dead.kill()
        dead.wait()
        try:
            yield executors, template
        finally:
            for sock in (executors.procs[5].pipe.sock, executors.procs[5].theirs):
                if sock is not None:
                    sock.close()


def test_executors_waiting_for_a_template_that_died_go_to_the_next(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The template died while it imported, with executor 4 waiting for it; the next executor
    # of its environment sees the death first (before its socket is read): a new template is
    # started, and executor 4 waits for that one, rather than for good.
    core = _Core()
    started: list[subprocess.Popen[bytes]] = []
    held: list[socket.socket] = []

    def popen(recipe: Recipe, mode: list[str], theirs: socket.socket) -> subprocess.Popen[bytes]:
        held.append(theirs.dup())  # (its end of the control socket, as a template holds it)
        started.append(subprocess.Popen(["sleep", "60"]))
        return started[-1]

    with _a_template_that_died(monkeypatch, tmp_path, core, popen) as (executors, template):
        try:
            assert executors.spawn(KEY, template.recipe, 5) == []
            new = executors.forks.templates[KEY]
            assert new is not template and new.waiting == [4, 5] and core.died == []
            # Stopped before it is ready, the new one leaves them dead, not waiting.
            executors.forks.drop(KEY)
            assert sorted(core.died) == [4, 5]
        finally:
            for proc in started:
                proc.kill()
                proc.wait()
            for sock in held:
                sock.close()


def test_executors_carried_to_a_template_that_cannot_start_are_dead(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    core = _Core()

    def popen(recipe: Recipe, mode: list[str], theirs: socket.socket) -> subprocess.Popen[bytes]:
        raise OSError(24, "Too many open files")

    with _a_template_that_died(monkeypatch, tmp_path, core, popen) as (executors, template):
        executors.spawn(KEY, template.recipe, 5)
        assert sorted(core.died) == [4, 5] and KEY not in executors.forks.templates


def test_no_strays_are_swept_while_a_fork_is_answered(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An executor forked, whose answer (or, sandboxed, whose pid) is not read yet, runs with
    # no pid the daemon knows: a sweep then would take it for a process a task left.
    with _with_a_template(monkeypatch, tmp_path, object(), True) as (executors, ex, template):
        swept: list[bool] = []
        monkeypatch.setattr(executors, "_sweep_strays", lambda procs: swept.append(True))
        monkeypatch.setattr(executors.forks.ahead, "keep", lambda *args: None)
        now = time.monotonic()
        template.asked, template.asked_at = [ex], now
        executors.tick(now)
        template.asked, ex.pid_due = [], now + 60  # (answered; sandboxed, its pid not said)
        executors.tick(now)
        assert swept == []
        ex.pid_due = 0.0
        executors.tick(now)
        assert swept == [True]


def test_a_template_not_reading_its_large_context_holds_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A context larger than the socket takes (a huge argv), to an interpreter held before it
    # reads it: starting the template does not wait, and the rest goes as it reads.
    held: list[socket.socket] = []

    def popen(recipe: Recipe, mode: list[str], theirs: socket.socket) -> subprocess.Popen[bytes]:
        held.append(theirs.dup())  # (its end, read below only once the template started)
        return subprocess.Popen(["sleep", "60"])

    monkeypatch.setattr(Recipe, "popen", popen)
    recipe = Recipe(1, tmp_path, None, tmp_path, ["x" * 1000] * 4000, {})  # 4 MB of argv
    template = Template.start(recipe, 0.0)
    try:
        assert template.control.pending
        got = bytearray()
        held[0].setblocking(False)
        deadline = time.monotonic() + 60
        while template.control.pending or select.select([held[0]], [], [], 0)[0]:
            assert time.monotonic() < deadline, "the context did not go out"
            template.send_rest()
            try:
                got += held[0].recv(1 << 20)
            except BlockingIOError:
                pass
        assert len(got) > 4_000_000 and got.count(b"x" * 1000) == 4000  # (all of it came)
    finally:
        cast(subprocess.Popen[bytes], template.proc).kill()
        cast(subprocess.Popen[bytes], template.proc).wait()
        template.control.close()
        held[0].close()

"""Tiny tasks under load travel in batches: the worker core queues more of them in their
executor, and the executor sends their outcomes together (``executor._outgoing``), each with
the time it ran."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from distrib.executor import _outgoing
from distrib.executor._outgoing import HOLD_MAX, Outgoing
from distrib.executor._subcalls import Channel
from distrib.wire._messages import Outcome
from distrib.wire._pipe import Pipe
from distrib.wire._pipe_messages import Done, Skip
from distrib.worker._corestate import PREFETCH, PREFETCH_DEEP, PREFETCH_DEEP_BYTES
from distrib.worker._events import ExecutorReady, Report, Spawn, TaskDone, Turn
from tests.helpers import wait_for
from tests.unit.test_core_slots import Checked, of, qt, started


def _finish(s: Checked, ex: int, now: float, info: dict[str, str]) -> list[Report]:
    out = of(Report, s.handle(TaskDone(ex, s.running(ex).run_id, Outcome.OK, info, []), now))
    s.handle(Turn(), now)
    return out


def test_tasks_their_executor_says_ran_under_half_a_millisecond_are_queued_deeper() -> None:
    s = Checked(1)
    ex = of(Spawn, started(s, *[qt(i) for i in range(40)]))[0].ex_id
    s.handle(ExecutorReady(ex), 0.0)
    s.handle(Turn(), 0.0)
    now = 0.0
    for _ in range(10):  # outcomes that arrive together: the daemon sees no time between them
        reports = _finish(s, ex, now, {"ran": "0.000050"})
        assert [r.info["ran"] for r in reports] == ["0.000050"]  # (the Main is told that)
    assert len(s.executors[ex].runs) == PREFETCH_DEEP + 1


def test_large_calls_are_not_queued_deeper() -> None:
    s = Checked(1)
    ex = of(Spawn, started(s, *[qt(i, size=PREFETCH_DEEP_BYTES) for i in range(40)]))[0].ex_id
    s.handle(ExecutorReady(ex), 0.0)
    s.handle(Turn(), 0.0)
    for _ in range(10):
        _finish(s, ex, 0.0, {"ran": "0.000050"})
    assert len(s.executors[ex].runs) == PREFETCH + 1


@pytest.mark.parametrize("said", ["soon", "-1", "nan", "inf"])
def test_a_run_time_the_executor_garbles_is_the_one_the_daemon_saw(said: str) -> None:
    s = Checked(1)
    ex = of(Spawn, started(s, qt(1), qt(2)))[0].ex_id
    s.handle(ExecutorReady(ex), 0.0)
    s.handle(Turn(), 0.0)
    assert [r.info["ran"] for r in _finish(s, ex, 0.25, {"ran": said})] == ["0.250000"]


@pytest.fixture
def pipes() -> Iterator[tuple[Outgoing, Pipe]]:
    ours, theirs = socket.socketpair()
    pipe, daemon = Pipe(ours), Pipe(theirs)
    yield Outgoing(Channel(pipe, threading.RLock())), daemon
    pipe.close()
    daemon.close()


def _done(run_id: int) -> Done:
    return Done(run_id, Outcome.OK, {}, {}, (b"result",))


def _waiting(daemon: Pipe) -> bool:
    daemon.sock.setblocking(False)
    try:
        return daemon.readable()
    finally:
        daemon.sock.setblocking(True)


def test_an_outcome_goes_at_once_when_no_task_waits_or_the_task_was_not_tiny(
        pipes: tuple[Outgoing, Pipe]) -> None:
    outgoing, daemon = pipes
    outgoing.send(_done(1), 0.00001, waiting=1)
    assert daemon.recv() == _done(1)
    outgoing.send(_done(2), 0.5, waiting=5)
    assert daemon.recv() == _done(2)


def test_outcomes_of_tiny_tasks_wait_for_the_next_ones_and_go_together_in_order(
        pipes: tuple[Outgoing, Pipe]) -> None:
    outgoing, daemon = pipes
    outgoing.send(_done(1), 0.00001, waiting=3)
    outgoing.send(_done(2), 0.00001, waiting=2)
    assert not _waiting(daemon)
    outgoing.send(_done(3), 0.00001, waiting=1)  # the last but one: all go, the daemon refills
    assert [daemon.recv() for _ in range(3)] == [_done(1), _done(2), _done(3)]
    assert not daemon.buffered()


def test_no_more_than_hold_max_outcomes_wait(pipes: tuple[Outgoing, Pipe]) -> None:
    outgoing, daemon = pipes
    for i in range(HOLD_MAX):
        outgoing.send(_done(i), 0.00001, waiting=100)
    assert [daemon.recv().run_id for _ in range(HOLD_MAX)] == list(range(HOLD_MAX))


def test_held_outcomes_go_after_hold_seconds_while_a_long_task_runs(
        pipes: tuple[Outgoing, Pipe], monkeypatch: pytest.MonkeyPatch) -> None:
    outgoing, daemon = pipes
    monkeypatch.setattr(_outgoing, "HOLD_SECONDS", 0.05)
    outgoing.send(_done(1), 0.00001, waiting=3)
    # (the executor's thread is in the next task now, for as long as it takes)
    wait_for(lambda: _waiting(daemon), 30, "the held outcome")
    assert daemon.recv() == _done(1)
    outgoing.flush()  # (nothing held: nothing sent)
    outgoing.send(_done(2), 0.00001, waiting=3)  # the watch holds again, and sends again
    wait_for(lambda: _waiting(daemon), 30, "the second held outcome")
    assert daemon.recv() == _done(2)


def test_a_flush_sends_the_held_outcomes_before_what_follows(
        pipes: tuple[Outgoing, Pipe]) -> None:
    outgoing, daemon = pipes
    outgoing.send(_done(1), 0.00001, waiting=3)
    outgoing.flush()
    outgoing._channel.send(Skip(9))
    assert [daemon.recv() for _ in range(2)] == [_done(1), Skip(9)]


def test_whatever_the_executor_sends_next_goes_after_the_held_outcomes(
        pipes: tuple[Outgoing, Pipe]) -> None:
    # (the next task's calls, parks and output name its own run: the daemon must have read
    # the outcomes before them, or it would take them for the held task's and drop them)
    outgoing, daemon = pipes
    outgoing.send(_done(1), 0.00001, waiting=3)
    outgoing.send(_done(2), 0.00001, waiting=2)
    outgoing._channel.send(Skip(9))
    assert [daemon.recv() for _ in range(3)] == [_done(1), _done(2), Skip(9)]
    outgoing._channel.send_soon(Skip(10))  # (the reader thread's sends too)
    assert daemon.recv() == Skip(10)
    assert not daemon.buffered()


def test_a_task_that_forks_leaves_its_child_a_free_lock(pipes: tuple[Outgoing, Pipe]) -> None:
    outgoing, daemon = pipes
    outgoing.send(_done(1), 0.00001, waiting=3)  # (the watch runs from now on)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # (as the watch does as it sends)
        with outgoing._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    threading.Timer(0.2, release.set).start()
    pid = os.fork()  # (waits for the lock, so the child's copy is free)
    if pid == 0:
        os._exit(0 if outgoing._lock.acquire(timeout=5) else 1)
    holder.join(30)
    assert os.waitpid(pid, 0)[1] == 0
    assert daemon.recv() == _done(1)

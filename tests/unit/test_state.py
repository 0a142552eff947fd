"""The worker's queues and the Main's scheduler, driven without sockets or processes."""

from __future__ import annotations

from distrib.main._scheduler import Scheduler
from distrib.main._tracked import Task, WorkerView
from distrib.worker._state import QueuedTask, Queues


def qt(peer: bytes, task_id: int, threads: int = 1, dist: str = "d") -> QueuedTask:
    return QueuedTask(peer, task_id, dist, threads, None, [b""])


def test_mains_take_turns() -> None:
    q = Queues()
    for i in range(3):
        q.add(qt(b"A", i))
    q.add(qt(b"B", 10))
    order = [q.next_runnable(1, lambda t: True) for _ in range(4)]
    assert [(t.peer, t.task_id) for t in order if t] == [(b"A", 0), (b"B", 10), (b"A", 1),
                                                         (b"A", 2)]
    assert q.next_runnable(1, lambda t: True) is None


def test_tasks_wait_for_enough_free_slots_and_a_ready_environment() -> None:
    q = Queues()
    q.add(qt(b"A", 1, threads=2))
    q.add(qt(b"A", 2, dist="unready"))
    q.add(qt(b"A", 3))
    pick = q.next_runnable(1, lambda t: t.dist != "unready")
    assert pick is not None and pick.task_id == 3
    pick = q.next_runnable(2, lambda t: t.dist != "unready")
    assert pick is not None and pick.task_id == 1
    assert len(q) == 1


def test_remove_and_drop_peer() -> None:
    q = Queues()
    q.add(qt(b"A", 1))
    q.add(qt(b"A", 2))
    q.add(qt(b"B", 3))
    removed = q.remove(b"A", 2)
    assert removed is not None and removed.task_id == 2
    assert q.remove(b"A", 2) is None
    assert [t.task_id for t in q.drop_peer(b"A")] == [1]
    assert q.count(b"A") == 0 and len(q) == 1
    assert q.first_peer_with("d") == b"B"


def task(task_id: int, threads: int = 1, platforms: tuple[str, ...] = ("*",),
         retries: int = 1) -> Task:
    return Task(task_id, "f", [b""], platforms, threads, retries, None)


def worker(link: str, slots: int = 2, platform: str = "linux-x86_64",
           python: str = "3.11") -> WorkerView:
    return WorkerView(link, link, platform, python, slots)


def test_workers_are_filled_a_little_beyond_their_slots_and_no_further() -> None:
    s = Scheduler("3.11", extra_depth=2)
    for i in range(100):
        s.add(task(i))
    s.join(worker("a", slots=2))
    first = s.assign()
    assert len(first["a"]) == 6  # 2 slots + 2 rounds of 2 queued
    assert s.assign() == {}
    s.finish("a", first["a"][0].task_id)
    assert [t.task_id for t in s.assign()["a"]] == [6]
    assert len(s) == 99  # one finished


def test_matching_platform_python_and_threads() -> None:
    s = Scheduler("3.11")
    s.join(worker("mac", platform="darwin-arm64"))
    s.join(worker("old", python="3.10"))
    s.join(worker("big", slots=8))
    s.add(task(1, platforms=("linux-*",)))
    s.add(task(2, threads=4))
    s.add(task(3, platforms=("windows-*",)))
    placed = {t.task_id: link for link, ts in s.assign().items() for t in ts}
    assert placed == {1: "big", 2: "big"}
    assert list(s.unmatched()) == [(("windows-*",), 1, 0)]


def test_a_lost_worker_requeues_within_retries_then_fails() -> None:
    s = Scheduler("3.11")
    s.join(worker("a"))
    s.add(task(1, retries=1))
    s.assign()
    assert s.leave("a") == []
    s.join(worker("b"))
    assert [t.task_id for t in s.assign()["b"]] == [1]
    failed = s.leave("b")
    assert [t.task_id for t in failed] == [1] and failed[0].attempts == 2


def test_retry_after_crash_and_withdraw() -> None:
    s = Scheduler("3.11")
    s.join(worker("a"))
    s.add(task(1, retries=1))
    s.add(task(2))
    s.assign()
    t1 = s.finish("a", 1)
    assert t1 is not None and s.retry(t1)
    assert s.withdraw(1) == (t1, None)
    assert s.withdraw(2) == (None, "a")
    t1.attempts = 5
    assert not s.retry(t1)


def test_a_fast_worker_gets_a_deeper_queue() -> None:
    s = Scheduler("3.11", extra_depth=2)
    fast = worker("a", slots=2)
    s.join(fast)
    base = s.depth(fast)
    fast.finished = 10_000
    s.observe(1.0)
    assert fast.rate == 10_000 and s.depth(fast) == 2 + 200 > base
    s.observe(1.0)  # nothing finished since: the rate decays
    assert fast.rate == 5_000


def test_idle_slots_win_over_a_deep_queue() -> None:
    s = Scheduler("3.11")
    busy, idle = worker("busy", slots=2), worker("idle", slots=2)
    busy.rate = 100_000  # a fast worker with a deep queue
    s.join(busy)
    s.join(idle)
    for i in range(4):
        s.add(task(i))
    placed = [(t.task_id, link) for link, ts in s.assign().items() for t in ts]
    assert sorted(link for _, link in placed).count("idle") >= 2


def test_a_deferred_task_waits_on_the_main_and_the_worker_rests_a_tick() -> None:
    s = Scheduler("3.11")
    s.join(WorkerView("w", "w", "linux-x86_64", "3.11", 1))
    for i in range(3):
        s.add(task(i))
    sent = s.assign()["w"]
    deferred = s.finish("w", sent[-1].task_id)
    assert deferred is not None
    s.defer("w", deferred)
    assert s.assign() == {}  # the worker is full: nothing more until it reports
    s.observe(0.2)
    assert [t.task_id for t in s.assign()["w"]] == [deferred.task_id]
    assert deferred.attempts == 0


def test_a_call_cancelled_while_on_a_lost_worker_is_not_sent_again() -> None:
    from distrib._response import Response

    s = Scheduler("3.11")
    s.join(worker("a"))
    kept, cancelled = task(1), task(2)
    for t in (kept, cancelled):
        t.response = Response(t.task_id, "f", None)
        s.add(t)
    s.assign()
    cancelled.response.cancel()  # (the Cancel to the worker is on its way when it is lost)
    assert s.leave("a") == []
    assert [t.task_id for t in s.take_pending()] == [1]


def test_a_long_turn_of_the_daemon_is_not_counted_as_its_mains_silence() -> None:
    from distrib.worker._mains import MainPeer, Mains

    mains = Mains()
    for peer, seen in ((b"a", 100.0), (b"b", 108.0)):
        mains[peer] = MainPeer(peer, peer.decode(), peer.decode(), False, seen, "", "", "", 0)
    # The daemon read nothing for 12 s (a gibibyte copied from an executor): at 120 s, a
    # heard from at 100 s and b at 108 s would both be past a 10 s --lost-after.
    assert mains.silent(120.0, 10.0) == [b"a", b"b"]
    mains.excuse(12.0, 120.0)
    assert mains.silent(120.0, 10.0) == []
    assert mains[b"b"].last_seen == 120.0  # (never later than now)
    assert mains.silent(131.0, 10.0) == [b"a", b"b"]  # (silence after it counts again)

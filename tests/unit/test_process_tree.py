"""Process trees: found from /proc, killed whole (with what forks while it is killed), and a
task charged for its processes against the owner's memory limits (sizes given, not sampled)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from distrib import _process
from distrib.worker._memory import MemoryWatch
from tests.helpers import wait_for

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="trees are read from /proc")

# A parent of three sleeping children, each of which forks one more every 10 ms (a hundred).
FORKING = """
import os, time
for _ in range(3):
    if os.fork() == 0:
        for _ in range(100):
            if os.fork() == 0:
                time.sleep(600)
                os._exit(0)
            time.sleep(0.01)
        time.sleep(600)
        os._exit(0)
print("ready", flush=True)
time.sleep(600)
"""


def _running(pids: list[int]) -> list[int]:
    procs = _process.table()
    return [pid for pid in pids if pid in procs and not procs[pid].zombie]


@pytest.mark.parametrize("with_roots", [True, False])
def test_a_tree_forking_as_it_is_killed_is_killed_whole(with_roots: bool) -> None:
    proc = subprocess.Popen([sys.executable, "-c", FORKING], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        wait_for(lambda: len(_process.descendants(proc.pid, _process.children(
            _process.table()))) > 10, 30, "children forking")
        procs = _process.table()
        assert procs[proc.pid].ppid == os.getpid()
        assert procs[proc.pid].session == os.getsid(0)
        _process.kill_trees([proc.pid], with_roots=with_roots)
        if with_roots:
            proc.wait(10)
        # Every descendant is dead (zombies until their parents are reaped), none forks on.
        time.sleep(0.05)
        kids = _process.children(_process.table())
        assert _running(_process.descendants(proc.pid, kids)) == []
        assert (proc.poll() is None) is not with_roots
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def test_a_tree_read_down_its_lists_of_children_is_the_tree_of_the_whole_table() -> None:
    proc = subprocess.Popen([sys.executable, "-c", FORKING], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        wait_for(lambda: len(_process.descendants(proc.pid, _process.children(
            _process.table()))) > 300, 30, "children done forking")
        tree = _process.table_of_tree(proc.pid)
        whole = _process.table()
        below = _process.descendants(proc.pid, _process.children(whole))
        assert sorted(tree) == sorted([proc.pid, *below])
        assert all(tree[pid] == whole[pid] for pid in tree)
        assert _process.table_of_tree(os.getpid())[proc.pid].ppid == os.getpid()
    finally:
        _process.kill_trees([proc.pid])
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    assert _process.table_of_tree(proc.pid) == {}  # (an ended root: nothing)


def test_a_child_counts_in_its_task_and_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    rss = {10: 300 << 20, 11: 900 << 20, 20: 200 << 20}
    sizes = {10: (250 << 20, 280 << 20), 11: (890 << 20, 900 << 20), 20: (190 << 20, 195 << 20)}
    watch = MemoryWatch(per_task=1 << 30)
    monkeypatch.setattr(MemoryWatch, "_rss", lambda self, pid: rss[pid])
    monkeypatch.setattr(MemoryWatch, "_sample", lambda self, pid: sizes[pid])
    # Alone, each executor is within the limit; with its child, executor 1 is over it.
    assert watch.over({1: 10, 2: 20}, {}, "w") == []
    [(ex, why, limit)] = watch.over({1: 10, 2: 20}, {}, "w", trees={1: [11], 2: []})
    assert (ex, limit) == (1, 1 << 30)
    assert why.startswith("it used 1,237 MB with 1 process it started, more than worker w's "
                          "memory limit for a task (1G, its --max-task-memory)")
    assert why.endswith("its largest process: a child process of the task (pid 11, 944 MB)")


def test_over_the_total_the_task_with_the_largest_tree_is_stopped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rss = {10: 500 << 20, 11: 600 << 20, 12: 600 << 20, 20: 900 << 20}
    watch = MemoryWatch(total=2 << 30)
    monkeypatch.setattr(MemoryWatch, "_rss", lambda self, pid: rss[pid])
    monkeypatch.setattr(MemoryWatch, "_sample", lambda self, pid: (rss[pid], rss[pid]))
    [(ex, why, limit)] = watch.over({1: 10, 2: 20}, {}, "w", trees={1: [11, 12]})
    assert (ex, limit) == (1, 0)
    assert "more than its memory limit (2G, its --max-memory)" in why
    assert "(1,783 MB with 2 processes it started)" in why


def test_what_a_task_leaves_is_seen_and_what_ended_is_not() -> None:
    from distrib.executor._leftovers import Leftovers

    own = threading.Thread(target=threading.Event().wait, args=(0.5,))
    leftovers = Leftovers(lambda: (own,))
    own.start()  # (started later, but the executor's: not counted)
    assert leftovers.check() == ""
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait) for _ in range(2)]
    for thread in threads:
        thread.start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert leftovers.check() == "2 threads and 1 process running"
    finally:
        stop.set()
        child.kill()
        child.wait()
        for thread in [*threads, own]:
            thread.join()
    assert leftovers.check() == ""


def test_a_start_time_is_psutils_and_a_process_ended_has_none() -> None:
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        for pid in (1, os.getpid(), proc.pid):
            assert _process.started_at(pid) == psutil.Process(pid).create_time()
        proc.kill()
        wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE,
                 what="the killed child a zombie")
        assert _process.started_at(proc.pid) is None  # (a zombie: as good as gone)
    finally:
        proc.kill()
        proc.wait()
    assert _process.started_at(proc.pid) is None  # (reaped)

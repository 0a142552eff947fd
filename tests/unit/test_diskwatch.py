"""What tasks write, measured and judged: the per-task and whole-cache limits, on trees built
here (the daemon's use of them is tested with real workers in tests/integration/test_disk.py)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from distrib._scratch import remove_later
from distrib.executor._isolation import Copies
from distrib.worker._diskwatch import (
    ENTRY_BYTES,
    DiskLimits,
    DiskWatcher,
    Watched,
    deleted_open_bytes,
    tree_bytes,
)
from tests.helpers import wait_for

MB = 1 << 20


@pytest.fixture
def keep_cwd() -> Iterator[None]:
    here = os.getcwd()
    yield
    os.chdir(here)


def test_a_per_task_limit_stops_the_running_task_over_it_naming_the_limit() -> None:
    limits = DiskLimits(per_task=50 * MB)
    assert limits.over({1: 40 * MB, 2: 60 * MB, 3: 90 * MB}, {1, 2}, 0, "w0") == [
        (2, "it wrote 63 MB, more than worker w0's disk limit for a task (50M, its "
            "--max-task-disk)")]  # (3 is idle: what it holds counts in the total only)


def test_over_the_cache_idle_executors_go_first_then_the_largest_writer() -> None:
    limits = DiskLimits(total=100 * MB, total_setting="max_cache")
    assert limits.over({1: 30 * MB, 2: 40 * MB}, {1, 2}, 20 * MB, "w0") == []
    assert limits.over({1: 30 * MB, 2: 40 * MB, 3: 5 * MB}, {1, 2}, 30 * MB, "w0") == [
        (3, "idle, its folders over the cache's limit")]
    [(ex, why)] = limits.over({1: 30 * MB, 2: 40 * MB}, {1, 2}, 40 * MB, "w0")
    assert ex == 2
    assert why == ("the tasks on worker w0 wrote 73 MB together, more than the 63 MB its "
                   "cache's limit (100M, its max_cache) leaves them beside the rest of the "
                   "cache; this task wrote the most (42 MB)")
    # The rest of the cache over the limit (the store evicts it): tasks still have half.
    assert limits.over({1: 40 * MB}, {1}, 200 * MB, "w0") == []
    [(ex, why)] = limits.over({1: 60 * MB}, {1}, 200 * MB, "w0")
    assert "more than the 52 MB its cache's limit" in why


def test_each_file_costs_at_least_a_block_and_a_walk_stops_past_its_cap(tmp_path: Path) -> None:
    for i in range(100):
        (tmp_path / f"f{i}").touch()
    (tmp_path / "big").write_bytes(b"x" * (3 * MB))
    assert tree_bytes([tmp_path]) == 100 * ENTRY_BYTES + 3 * MB
    assert tree_bytes([tmp_path / "missing"]) == 0
    deep = tmp_path / "deep"
    for i in range(50):
        (deep / str(i)).mkdir(parents=True)
        (deep / str(i) / "data").write_bytes(b"y" * 100_000)
    whole = tree_bytes([deep])
    assert tree_bytes([deep], cap=1) < whole  # (it stopped early, past its cap)


def test_a_deleted_file_held_open_counts(tmp_path: Path) -> None:
    before = deleted_open_bytes(os.getpid())
    path = tmp_path / "hidden"
    with open(path, "wb") as f:
        os.unlink(path)
        f.write(os.urandom(2 * MB))
        f.flush()
        os.fsync(f.fileno())
        assert deleted_open_bytes(os.getpid()) - before >= 2 * MB
    assert deleted_open_bytes(os.getpid()) == before


def _watcher(tmp_path: Path, limits: DiskLimits) -> tuple[DiskWatcher, threading.Event]:
    woken = threading.Event()
    runs = tmp_path / "cache" / "runs" / "1-daemon"
    runs.mkdir(parents=True)
    return DiskWatcher(limits, runs, tmp_path / "cache", "w0", woken.set), woken


def test_the_watcher_finds_an_overlays_upper_layer_past_the_limit(tmp_path: Path) -> None:
    watcher, woken = _watcher(tmp_path, DiskLimits(per_task=5 * MB))
    upper = watcher.runs / "4242-1" / "upper"
    (upper / "sub").mkdir(parents=True)
    (watcher.runs / "4242-1" / "work" / "work").mkdir(parents=True)
    (upper / "sub" / "a").write_bytes(b"a" * (4 * MB))
    (watcher.runs / "objects").mkdir()  # (not an executor's: not counted)
    (watcher.runs / "objects" / "big").write_bytes(b"o" * (8 * MB))
    try:
        watcher.watch({7: Watched(4242, run=3), 8: Watched(4343, run=0)})
        assert not woken.wait(0.5) and watcher.take() == []  # 4 MB: under it
        (upper / "b").write_bytes(b"b" * (2 * MB))
        wait_for(woken.is_set, 10, "a verdict")
        [(ex, run, why)] = watcher.take()
        assert (ex, run) == (7, 3) and "(5M, its --max-task-disk)" in why
        assert watcher.take() == []  # (said once)
    finally:
        watcher.close()


def test_in_a_private_copy_only_what_exceeds_the_tree_counts(tmp_path: Path,
                                                            keep_cwd: None) -> None:
    env = tmp_path / "env"
    env.mkdir()
    (env / "data.bin").write_bytes(b"d" * (8 * MB))  # a large shipped file: not a write
    watcher, woken = _watcher(tmp_path, DiskLimits(per_task=5 * MB))
    copies = Copies(env, watcher.runs)  # (its folders are named after this process)
    copies.enter()
    try:
        watcher.watch({1: Watched(os.getpid(), run=1, baseline=env)})
        assert not woken.wait(0.5) and watcher.take() == []
        Path("out.bin").write_bytes(b"o" * (6 * MB))
        wait_for(woken.is_set, 10, "a verdict")
        [(_, _, why)] = watcher.take()
        assert why.startswith("it wrote 6 MB,"), why
    finally:
        watcher.close()


NO_PID = 99_999_999  # over any kernel's pid_max: what no process writes


def _many_files(watcher: DiskWatcher, count: int, pid: int) -> Path:
    upper = watcher.runs / f"{pid}-1" / "upper"
    for i in range(count // 100):
        (upper / str(i)).mkdir(parents=True)
        for j in range(99):
            (upper / str(i) / str(j)).touch()
    return upper


def _polls_until_walked(watcher: DiskWatcher, watched: dict[int, Watched]) -> int:
    for polls in range(1, 100):
        assert watcher._poll(watched, 0.0) == []
        if watcher._seen[1].walk is None:
            return polls
    raise AssertionError("the walk never ended")


def test_between_walks_of_a_large_tree_its_large_files_are_checked_at_every_poll(
        tmp_path: Path) -> None:
    watcher, _ = _watcher(tmp_path, DiskLimits(per_task=30 * MB))
    # 16 MB as counted: a walk of a few polls (by no process: the kernel's count of what it
    # wrote does not hurry the walk)
    upper = _many_files(watcher, 4000, NO_PID)
    (upper / "big").write_bytes(b"b" * (2 * MB))
    watched = {1: Watched(NO_PID, run=1)}
    assert _polls_until_walked(watcher, watched) > 1
    with open(upper / "big", "ab") as f:
        f.write(b"b" * (14 * MB))
    [(ex, run, why)] = watcher._poll(watched, 0.0)  # at once, though the walk is not over
    assert watcher._seen[1].walk is not None and why.startswith("it wrote 33 MB,"), why
    watcher.close()


def test_writing_more_than_the_limit_leaves_finishes_the_walk_at_once(tmp_path: Path) -> None:
    watcher, _ = _watcher(tmp_path, DiskLimits(per_task=20 * MB))
    upper = _many_files(watcher, 4000, os.getpid())
    watched = {1: Watched(os.getpid(), run=1)}
    _polls_until_walked(watcher, watched)
    with open(upper / "new", "wb") as f:  # (a new file: not one the last walk found large)
        f.write(b"n" * (8 * MB))
        f.flush()
    watcher._seen[1].ended = float("-inf")  # (the last walk ended long ago)
    over = watcher._poll(watched, 0.0)
    walking = watcher._seen[1].walk is not None
    watcher.close()
    if not over and walking:
        pytest.skip("this kernel does not count the bytes a process writes (/proc/PID/io)")
    assert not walking and over  # (not a walk over several polls)


def test_a_killed_executors_folder_goes_out_of_the_way_at_once_and_is_removed_later(
        tmp_path: Path) -> None:
    layer = tmp_path / "4242-1"
    (layer / "upper" / "many").mkdir(parents=True)
    (layer / "work" / "work").mkdir(parents=True)
    for i in range(100):
        (layer / "upper" / "many" / str(i)).touch()
    (layer / "work" / "work").chmod(0)  # (as an overlay leaves it)
    remove_later(layer)
    assert not layer.exists()  # (the watcher no longer counts it: not an executor's name)
    wait_for(lambda: not any(tmp_path.iterdir()), 30, "the folder removed")


def test_a_private_tmp_given_to_an_executor_counts_with_its_layers(tmp_path: Path) -> None:
    watcher, _ = _watcher(tmp_path, DiskLimits(per_task=5 * MB))
    (watcher.runs / f"{NO_PID}-1" / "upper").mkdir(parents=True)
    (watcher.runs / f"{NO_PID}-1" / "upper" / "a").write_bytes(b"a" * (3 * MB))
    private = tmp_path / "tmp"
    private.mkdir()
    (private / "b").write_bytes(b"b" * (3 * MB))
    assert watcher._poll({1: Watched(NO_PID, run=1)}, 0.0) == []
    [(_, _, why)] = watcher._poll({1: Watched(NO_PID, run=2, private=(private,))}, 0.0)
    assert why.startswith("it wrote 6 MB,"), why
    watcher.close()

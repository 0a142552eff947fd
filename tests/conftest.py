"""Shared fixtures: real worker daemons, user scripts run as subprocesses, and a leak check."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from distrib import _process
from tests.helpers import PYTHON, Worker, Workspace, stop_process


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    path = tmp_path / "cache"
    path.mkdir()
    return path


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start real worker daemons on 127.0.0.1 with a free port; all stopped by PID at the end."""
    started: list[Worker] = []

    def start(threads: int = 2, name: str | None = None, extra: tuple[str, ...] = (),
              listen: str = "127.0.0.1:0", prefix: tuple[str, ...] = (),
              env: dict[str, str] | None = None, python: str | Path = PYTHON,
              named: bool = True) -> Worker:
        name = name or f"w{len(started)}"  # (named=False: the worker picks its own default)
        cache = tmp_path / f"worker-cache-{name}"
        log_file = tmp_path / f"worker-{name}.log"
        # A 1 MiB frame limit lets tests send an oversized frame.
        env = {**os.environ, "DISTRIB_MAX_MESSAGE_MB": "1", **(env or {})}
        with open(log_file, "w") as log:
            proc = subprocess.Popen(
                [*prefix, str(python), "-m", "distrib", "worker", "--listen", listen, "--threads",
                 str(threads), *(("--name", name) if named else ()), "--cache-dir", str(cache),
                 "-v", *extra],
                stdout=subprocess.PIPE, stderr=log, text=True, cwd=tmp_path, env=env,
            )
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the daemon prints one line when ready
        match = re.search(r"ready on (\S+) with \d+ slots?(?:, public key (\S+))?", line)
        if not match:
            stop_process(proc)
            raise AssertionError(f"worker did not start: {line!r} {log_file.read_text()}")
        worker = Worker(proc, match.group(1), name, cache, log_file, match.group(2))
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
        if worker.proc.stdout:
            worker.proc.stdout.close()


@pytest.fixture
def workspace(tmp_path: Path, cache_dir: Path) -> Workspace:
    root = tmp_path / "project"
    root.mkdir()
    return Workspace(root, cache_dir)


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid``, zombies too, read down the lists of children /proc keeps
    (psutil's ``children(recursive=True)`` reads every process of the machine: about 10 ms
    with a few hundred, twice or more at each of the suite's tests)."""
    return _process.descendants(pid, _process.children(_process.table_of_tree(pid)))


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail a test that leaves child processes of the test runner behind."""
    me = os.getpid()
    before = set(_descendants(me))
    yield

    def leaked() -> list[psutil.Process]:
        out = []
        for pid in set(_descendants(me)) - before:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    deadline = time.monotonic() + 30
    while leaked() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = leaked()
    for p in left:
        p.kill()
    assert not left, f"test leaked processes: {[(p.pid, p.cmdline()) for p in left]}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: takes tens of seconds on a busy machine; "
                            "./run test starts these first")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the long tests first, then the other tests that start processes, then the unit
    tests: ``./run test`` hands tests out in this order one or two at a time (xdist's
    loadgroup), so a long test started late does not keep the run going after the others are
    done, and short unit tests fill the gaps at the end. A module whose tests share a costly
    module- or session-scoped fixture (built environments, a Slurm cluster) is one
    ``xdist_group`` and goes first as a whole, so that one process builds it once. The order
    within each part is the collection's."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("long") or item.get_closest_marker("xdist_group"):
            return 0
        return 2 if Path(item.path).parent.name == "unit" else 1

    items.sort(key=rank)

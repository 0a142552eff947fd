"""The owner's disk limits on what tasks write: per task (``--max-task-disk``) and, with
everything else the cache keeps, the whole cache (``--max-cache``).

Everything an executor writes lands in folders of its own under the worker's runs folder,
named ``<pid>-*``: its overlay's upper layers (or, where overlays are unavailable, its private
copy of the environment, of which only what exceeds the shipped tree counts), and any other
private folder it is given (a private /tmp) once it is named so. A watcher thread sums them,
for every executor, about ten times a second; ``DiskLimits.over`` says which executors to stop
and why, the daemon's loop stops them (SIGKILL), and their folders are removed with them, so
what the task wrote is dropped. The task fails with ``TaskDiskExceeded`` naming the limit.

Why polling, and not a filesystem of a fixed size for each upper layer: a tmpfs with
``size=`` holds what a task writes in memory (a 1G limit would cost up to 1G of RAM per
executor), and a loop device per executor needs privilege, a file to hold it, and a mkfs per
executor start (tens of milliseconds each, for every executor of every Main). A poll costs a
``stat`` per file a task wrote: a few microseconds for a task that wrote a handful of files,
and nothing on the daemon's loop. Its bound is how much a fast writer gets past the limit
before the next poll (a tenth of a second of writing), and a task that makes a great many
small files is caught by charging every file at least a block (``ENTRY_BYTES``); each walk
stops as soon as the limit is passed, and the watcher waits longer between polls when walks
grow slow, so it never takes more than a few percent of a core. A file the task deleted but
holds open is counted from the executor's open files.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from distrib.worker._memory import human

log = logging.getLogger("distrib.worker")

ENTRY_BYTES = 4096  # every file or folder costs at least a block
POLL = 0.1  # seconds between polls of small trees
BUSY_SHARE = 0.05  # the most of a core the watcher takes: slow walks poll less often
OTHERS_EVERY = 10.0  # seconds between walks of the rest of the cache
_OWN = re.compile(r"^(\d+)-")  # an executor's folder: <pid>-<anything>


def tree_bytes(roots: Iterable[Path], cap: int = 0) -> int:
    """Disk the trees under ``roots`` take: each file its size (or the blocks it holds, if
    more) and at least ``ENTRY_BYTES``; stops counting once past ``cap`` (0: counts all).
    Files that vanish meanwhile are skipped."""
    total = 0
    stack = [str(r) for r in roots]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += max(ENTRY_BYTES, st.st_size, st.st_blocks * 512)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
        except OSError:  # (gone, or not readable: an overlay's work folder has mode 000)
            continue
        if cap and total > cap:
            break
    return total


def deleted_open_bytes(pid: int) -> int:
    """Blocks held by files ``pid`` deleted but keeps open (not shared memory)."""
    total = 0
    fds = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fds)
    except OSError:
        return 0
    for name in names:
        path = f"{fds}/{name}"
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink:
                continue
            target = os.readlink(path)
        except OSError:
            continue
        if not target.startswith(("/memfd:", "/dev/shm/")):
            total += st.st_blocks * 512
    return total


@dataclass
class DiskLimits:
    """Limits in bytes (None or 0: none) and how each is named to the owner and the Main."""

    per_task: int | None = None
    total: int | None = None  # the whole cache: what the tasks wrote and everything else
    per_task_setting: str = "--max-task-disk"
    total_setting: str = "--max-cache"

    def over(self, written: dict[int, int], running: set[int], others: int,
             name: str) -> list[tuple[int, str]]:
        """(executor, why) to stop, given what each executor's folders hold (``written``,
        by executor id), which of them run a task, and what the rest of the cache takes.
        Over the total, idle executors go first (what they hold is a finished task's), then
        the running one that wrote the most."""
        out: list[tuple[int, str]] = []
        if self.per_task:
            for ex in running:
                if written.get(ex, 0) > self.per_task:
                    out.append((ex, f"it wrote {_mb(written[ex])}, more than worker {name}'s "
                                    f"disk limit for a task ({human(self.per_task)}, its "
                                    f"{self.per_task_setting})"))
        if out or not self.total:
            return out
        total = sum(written.values()) + others
        if total <= self.total:
            return []
        idle = [ex for ex, size in written.items() if ex not in running and size]
        if idle:
            return [(ex, "idle, its folders over the cache's limit") for ex in idle]
        writers = [ex for ex in running if written.get(ex, 0)]
        if not writers:
            return []  # (the cache's own contents: the store evicts those)
        largest = max(writers, key=lambda ex: written[ex])
        return [(largest, f"the tasks on worker {name} wrote {_mb(total - others)} together, "
                          f"and with the {_mb(others)} the rest of its cache takes that is "
                          f"more than its cache's limit ({human(self.total)}, its "
                          f"{self.total_setting}); this task wrote the most "
                          f"({_mb(written[largest])})")]


def _mb(size: int) -> str:
    if size >= 1e9:
        return f"{size / 1e9:,.1f} GB"
    return f"{size / 1e6:,.0f} MB" if size >= 1e6 else f"{size / 1e3:,.0f} kB"


@dataclass(frozen=True)
class Watched:
    """An executor as the watcher sees it."""

    pid: int
    run: int  # the task it runs (0: none)
    baseline: Path | None = None  # it works in a private copy of this tree: only what
    # exceeds the tree counts


@dataclass
class DiskWatcher:
    """The thread that measures executors' folders under ``runs`` and the rest of ``cache``;
    verdicts (executor, its task then, why) come back through ``take``; ``wake`` tells the
    loop there are some."""

    limits: DiskLimits
    runs: Path
    cache: Path
    name: str
    wake: Callable[[], None]
    _watched: dict[int, Watched] = field(default_factory=dict)
    _verdicts: list[tuple[int, int, str]] = field(default_factory=list)
    _baselines: dict[Path, int] = field(default_factory=dict)
    _others: int = 0
    _others_at: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Event = field(default_factory=threading.Event)
    _stop: bool = False
    _thread: threading.Thread | None = None

    def watch(self, executors: dict[int, Watched]) -> None:
        """(the loop) The executors to watch now (by executor id)."""
        with self._lock:
            if executors == self._watched:
                return
            self._watched = dict(executors)
        if executors and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="distrib-disk-watch",
                                            daemon=True)
            self._thread.start()
        self._changed.set()

    def take(self) -> list[tuple[int, int, str]]:
        """(the loop) Executors to stop, the task each ran when measured (0: none), and why;
        each said once."""
        with self._lock:
            out, self._verdicts = self._verdicts, []
        return out

    def close(self) -> None:
        self._stop = True
        self._changed.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop:
            with self._lock:
                watched = dict(self._watched)
            if not watched or not (self.limits.per_task or self.limits.total):
                self._changed.wait(1.0)
                self._changed.clear()
                continue
            began = time.monotonic()
            try:
                verdicts = self._poll(watched, began)
            except Exception:  # (a failed poll must not end the watch)
                log.exception("could not measure what tasks wrote")
                verdicts = []
            if verdicts:
                with self._lock:
                    self._watched = {ex: w for ex, w in self._watched.items()
                                     if ex not in {v[0] for v in verdicts}}
                    self._verdicts.extend(verdicts)
                self.wake()
            spent = time.monotonic() - began
            self._changed.wait(max(POLL, spent / BUSY_SHARE))
            self._changed.clear()

    def _poll(self, watched: dict[int, Watched], now: float) -> list[tuple[int, int, str]]:
        folders: dict[int, list[Path]] = {}
        try:
            with os.scandir(self.runs) as entries:
                for entry in entries:
                    match = _OWN.match(entry.name)
                    if match:
                        folders.setdefault(int(match.group(1)), []).append(Path(entry.path))
        except OSError:
            return []
        limits = self.limits
        written: dict[int, int] = {}
        for ex, w in watched.items():
            cap = (limits.per_task if w.run and limits.per_task else limits.total) or 0
            base = self._baseline(w.baseline) if w.baseline is not None else 0
            # An overlay's layer: what the task wrote is its upper folder (the work folder
            # holds a file only while the kernel copies it up). A copy: the whole folder.
            roots = [f / "upper" if (f / "upper").is_dir() else f
                     for f in folders.get(w.pid, ())]
            size = tree_bytes(roots, cap + base if cap else 0) - base
            written[ex] = max(0, size) + deleted_open_bytes(w.pid)
        if limits.total and now - self._others_at > OTHERS_EVERY:
            self._others_at = now
            self._others = self._rest_of_cache()
        running = {ex for ex, w in watched.items() if w.run}
        return [(ex, watched[ex].run, why)
                for ex, why in limits.over(written, running, self._others, self.name)]

    def _baseline(self, tree: Path) -> int:
        size = self._baselines.get(tree)
        if size is None:
            size = self._baselines[tree] = tree_bytes([tree])
        return size

    def _rest_of_cache(self) -> int:
        """What the cache takes besides the runs folders (files linked twice count once)."""
        total, seen = 0, set()
        skip = self.runs.parent
        for folder, dirs, files in os.walk(self.cache):
            if Path(folder) == skip.parent:
                dirs[:] = [d for d in dirs if d != skip.name]
            for name in files:
                try:
                    st = os.lstat(os.path.join(folder, name))
                except OSError:
                    continue
                if st.st_ino not in seen:
                    seen.add(st.st_ino)
                    total += st.st_size
        return total

"""The owner's disk limits on what tasks write: per task (``--max-task-disk``) and, with
everything else the cache keeps, the whole cache (``--max-cache``).

Everything an executor writes lands in folders of its own under the worker's runs folder,
named ``<pid>-*``: its overlay's upper layers (or, where overlays are unavailable, its private
copy of the environment, of which only what exceeds the shipped tree counts), and any other
private folder it is given (its private /tmp: named so, or passed as ``Watched.private``). A
watcher thread sums them for every executor ten times a second (once a second when only the
cache's limit is set: it is large, a quarter of the free disk by default); ``DiskLimits.over``
says which executors to stop and why; the daemon's loop, woken at once, stops them (SIGKILL),
and their folders are removed with them, so what the task wrote is dropped. The task fails
with ``TaskDiskExceeded`` naming the limit.

Why polling, and not a filesystem of a fixed size for each upper layer: a tmpfs with
``size=`` holds what a task writes in memory (a 1G limit would cost up to 1G of RAM per
executor), and a loop device per executor needs privilege, a file to back it and a mkfs at
every executor start (tens of milliseconds, for every executor of every Main). A poll costs a
``stat`` per file the task wrote: microseconds for a task that wrote a few files, and never
the daemon's loop. What it lets through is what a writer manages between two polls (a tenth
of a second of writing).

A task can make a walk slow by making a great many small files (a walk of 100,000 files takes
1.4 s here). Every file is charged at least a block (``ENTRY_BYTES``), so a limit bounds how
many it can make (262,144 under 1G), and a walk stops once past the limit. A large tree is
walked over many polls (``WALK_ENTRIES`` entries per poll: the watcher takes well under a
tenth of a core), while the files the last walk found large are looked at again at every
poll, and the kernel's count of the bytes the executor wrote (``/proc/PID/io``) finishes the
walk at once when it could have passed the limit. Measured here under a 1G limit, writing
1 MB chunks: stopped at 1.1 GB; after first making 200,000 empty files, at 1.6 GB (the
daemon used 4 s of CPU over that minute).

Not seen: a file deleted but held open by a process the task started (the executor's own
are counted), and writes outside the executor's folders (there are none once a sandbox
gives a task nothing else to write to). The rest of the cache is walked only when the
tasks' writes come near the cache's limit.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from msgspec import Struct, field

from distrib.worker._memory import human

log = logging.getLogger("distrib.worker")

ENTRY_BYTES = 4096  # every file or folder costs at least a block
POLL = 0.1  # seconds between polls, with a limit per task
TOTAL_POLL = 1.0  # without one: the cache's limit is large, and most workers have only it
HOT_BYTES = 1 << 20  # a file this large is checked at every poll, between walks
HOT_MOST = 32  # the most files checked so
WALK_ENTRIES = 500  # entries walked per poll, over all executors (about 7 ms here)
OTHERS_EVERY = 10.0  # seconds between walks of the rest of the cache (when they are needed)
_OWN = re.compile(r"^(\d+)-")  # an executor's folder: <pid>-<anything>


class Walk:
    """A walk of the trees under ``roots`` that can be taken in steps, totalling the disk they
    take: each file its size (or the blocks it holds, if more) and at least ``ENTRY_BYTES``.
    ``big`` gets the files of at least ``HOT_BYTES`` (path: what they were counted). Files
    that vanish meanwhile are skipped."""

    def __init__(self, roots: Iterable[Path], cap: int = 0, io: int = 0,
                 at: float = 0.0) -> None:
        self.cap = cap  # stop counting once past it (0: count all)
        self.io, self.at = io, at  # the executor's bytes written, and the time, at its start
        self.spent = 0.0  # seconds its steps took
        self.total = 0
        self.big: dict[str, int] = {}
        self.done = False
        self._stack = [str(r) for r in roots]
        self._entries: Iterator[os.DirEntry[str]] | None = None

    def step(self, entries: int = 0) -> bool:
        """Count ``entries`` more (0: all); whether the walk is done."""
        left = entries or -1
        while not self.done and left:
            if self._entries is None:
                if not self._stack:
                    self.done = True
                    break
                try:
                    self._entries = os.scandir(self._stack.pop())
                except OSError:  # (gone, or not readable: an overlay's work folder, mode 000)
                    continue
            entry = next(self._entries, None)
            if entry is None:
                self._close()
                continue
            left -= 1
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            size = max(ENTRY_BYTES, st.st_size, st.st_blocks * 512)
            self.total += size
            if stat.S_ISDIR(st.st_mode):
                self._stack.append(entry.path)
            elif size >= HOT_BYTES:
                self.big[entry.path] = size
            if self.cap and self.total > self.cap:
                self.done = True
        if self.done:
            self._close()
        return self.done

    def close(self) -> None:
        """Stop here (a walk no longer wanted)."""
        self.done = True
        self._close()

    def _close(self) -> None:
        if self._entries is not None:
            self._entries.close()  # type: ignore[attr-defined]
            self._entries = None


def tree_bytes(roots: Iterable[Path], cap: int = 0) -> int:
    """Disk the trees under ``roots`` take, as ``Walk`` counts it; stops counting once past
    ``cap`` (0: counts all)."""
    walk = Walk(roots, cap)
    walk.step()
    return walk.total


def file_bytes(path: str) -> int:
    """What ``tree_bytes`` counts for one file (0: it is gone)."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return max(ENTRY_BYTES, st.st_size, st.st_blocks * 512)


def io_written(pid: int) -> int:
    """Bytes ``pid`` (and the children it reaped) sent to storage so far, as the kernel
    counts them when pages are dirtied (0: not told)."""
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            for line in f:
                if line.startswith(b"write_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


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


class DiskLimits(Struct):
    """Limits in bytes (None or 0: none) and how each is named to the owner and the Main."""

    per_task: int | None = None
    total: int | None = None  # the whole cache: what the tasks wrote and everything else
    per_task_setting: str = "--max-task-disk"
    total_setting: str = "--max-cache"

    def over(self, written: dict[int, int], running: set[int], others: int,
             name: str) -> list[tuple[int, str]]:
        """(executor, why) to stop, given what each executor's folders hold (``written``,
        by executor id), which of them run a task, and what the rest of the cache takes.
        The tasks together may write what the cache's limit leaves beside the rest, and at
        least half of it (the store brings the rest down as it evicts, counting what the tasks
        wrote). Past that, idle executors go first (what they hold is a finished task's),
        then the running one that wrote the most."""
        out: list[tuple[int, str]] = []
        if self.per_task:
            for ex in running:
                if written.get(ex, 0) > self.per_task:
                    out.append((ex, f"it wrote {_mb(written[ex])}, more than worker {name}'s "
                                    f"disk limit for a task ({human(self.per_task)}, its "
                                    f"{self.per_task_setting})"))
        if out or not self.total:
            return out
        room = self.total - min(others, self.total // 2)
        together = sum(written.values())
        if together <= room:
            return []
        idle = [ex for ex, size in written.items() if ex not in running and size]
        if idle:
            return [(ex, "idle, its folders over the cache's limit") for ex in idle]
        writers = [ex for ex in running if written.get(ex, 0)]
        if not writers:
            return []  # (the cache's own contents: the store evicts those)
        largest = max(writers, key=lambda ex: written[ex])
        return [(largest, f"the tasks on worker {name} wrote {_mb(together)} together, more "
                          f"than the {_mb(room)} its cache's limit ({human(self.total)}, its "
                          f"{self.total_setting}) leaves them beside the rest of the cache; "
                          f"this task wrote the most ({_mb(written[largest])})")]


def _mb(size: int) -> str:
    if size >= 1e9:
        return f"{size / 1e9:,.1f} GB"
    return f"{size / 1e6:,.0f} MB" if size >= 1e6 else f"{size / 1e3:,.0f} kB"


class Watched(Struct, frozen=True):
    """An executor as the watcher sees it."""

    pid: int
    run: int  # the task it runs (0: none)
    baseline: Path | None = None  # it works in a private copy of this tree: only what
    # exceeds the tree counts
    private: tuple[Path, ...] = ()  # other folders it writes to (its private /tmp)


class _Seen(Struct):
    """What the watcher knows of one executor's folders."""

    run: int  # the task it ran when this began
    written: int = 0  # what the last whole walk counted (less the baseline)
    hot: dict[str, int] = field(default_factory=dict)  # its largest files then, and their size
    io: int = 0  # the executor's bytes written when that walk began
    ended: float = float("-inf")  # when that walk ended
    spent: float = 0.0  # the time it took, in steps
    walk: Walk | None = None  # the walk under way


class DiskWatcher(Struct):
    """The thread that measures executors' folders under ``runs`` and the rest of ``cache``;
    verdicts (executor, its task then, why) come back through ``take``; ``wake`` tells the
    loop there are some.

    At each poll, for every executor: the files that were large at the last walk are looked
    at again (a fast writer is caught within a poll of passing the limit), and the walk of
    its folders goes on by a share of ``WALK_ENTRIES`` entries (a small tree is walked whole
    at every poll, a tree of many files over many polls). When the executor has written more
    since its last walk began than the limit leaves (the kernel's count of the bytes it
    wrote), the walk is finished at once."""

    limits: DiskLimits
    runs: Path
    cache: Path
    name: str
    wake: Callable[[], None]
    _watched: dict[int, Watched] = field(default_factory=dict)
    _verdicts: list[tuple[int, int, str]] = field(default_factory=list)
    _seen: dict[int, _Seen] = field(default_factory=dict)
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
        self._forget(set(self._seen))

    def _forget(self, executors: set[int]) -> None:
        for ex in executors:
            seen = self._seen.pop(ex, None)
            if seen is not None and seen.walk is not None:
                seen.walk.close()

    def _run(self) -> None:
        while not self._stop:
            with self._lock:
                watched = dict(self._watched)
            if not watched or not (self.limits.per_task or self.limits.total):
                self._forget(set(self._seen))
                self._changed.wait(1.0)
                self._changed.clear()
                continue
            try:
                verdicts = self._poll(watched, time.monotonic())
            except Exception:  # (a failed poll must not end the watch)
                log.exception("could not measure what tasks wrote")
                verdicts = []
            if verdicts:
                with self._lock:
                    self._watched = {ex: w for ex, w in self._watched.items()
                                     if ex not in {v[0] for v in verdicts}}
                    self._verdicts.extend(verdicts)
                self.wake()
            self._changed.wait(POLL if self.limits.per_task else TOTAL_POLL)
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
        self._forget(set(self._seen) - set(watched))
        budget = max(WALK_ENTRIES // len(watched), 100)
        written: dict[int, int] = {}
        for ex, w in watched.items():
            seen = self._seen.get(ex)
            io = io_written(w.pid)
            if seen is None or seen.run != w.run:  # (a new task: its layer is new too)
                self._forget({ex})
                seen = self._seen[ex] = _Seen(w.run, io=io)
            cap = (limits.per_task if w.run and limits.per_task else limits.total) or 0
            base = self._baseline(w.baseline) if w.baseline is not None else 0
            if seen.walk is None:
                # An overlay's layer: what the task wrote is its upper folder (the work
                # folder holds a file only while the kernel copies it up). A copy: all of it.
                roots = [f / "upper" if (f / "upper").is_dir() else f
                         for f in folders.get(w.pid, ())] + list(w.private)
                seen.walk = Walk(roots, cap + base if cap else 0, io, now)
            walk = seen.walk
            # (at most half the time walking back to back, for a task that rewrites a file)
            began = time.monotonic()
            urgent = bool(cap) and io - seen.io > cap - seen.written and (
                began - seen.ended >= seen.spent)
            done = walk.step(0 if urgent else budget)
            walk.spent += time.monotonic() - began
            if done:
                seen.written, seen.io = max(0, walk.total - base), walk.io
                seen.ended, seen.spent = time.monotonic(), walk.spent
                seen.hot = dict(sorted(walk.big.items(), key=lambda kv: -kv[1])[:HOT_MOST])
                seen.walk = None
            grown = sum(file_bytes(path) - size for path, size in seen.hot.items())
            written[ex] = max(0, seen.written + grown) + deleted_open_bytes(w.pid)
        # The rest of the cache (a walk of all of it) is measured only once the tasks' writes
        # take half of what it left, and then at most every OTHERS_EVERY seconds.
        if limits.total and sum(written.values()) > (limits.total - self._others) // 2 and (
                now - self._others_at > OTHERS_EVERY):
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
        """What the cache takes besides the runs folders and the built Python environments
        (those have a limit of their own, --max-envs); files linked twice count once."""
        total, seen = 0, set()
        skip = {self.runs.parent.name, "venvs"}
        for folder, dirs, files in os.walk(self.cache):
            if Path(folder) == self.cache:
                dirs[:] = [d for d in dirs if d not in skip]
            for name in files:
                try:
                    st = os.lstat(os.path.join(folder, name))
                except OSError:
                    continue
                if st.st_ino not in seen:
                    seen.add(st.st_ino)
                    total += st.st_size
        return total

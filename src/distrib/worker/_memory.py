"""The owner's memory limits: per task (``--max-task-memory``) and for all executors together
(``--max-memory``), enforced by sampling the executors' resident memory (psutil).

Pure but for the sampling: the daemon asks ``over()`` at each tick which executors to stop and
why. An executor over the per-task limit is stopped; over the total, the largest executor
running a task is. Executors forked from a template share the pages it filled (the modules
it imported, their data): a task is charged the memory only its executor holds (its unique
set), and the total adds each executor's proportional share, so shared pages count once. Sampling every tick (a quarter of a second) lets a fast allocation pass the
limit briefly before it is stopped; cgroups would cap it exactly, and are not used yet
(``why_no_cgroup`` says what this machine offers, for the log).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil


def why_no_cgroup() -> str:
    """Why the limits are not a cgroup's, as the log says it at start."""
    try:
        own = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    except OSError:
        return "no cgroups on this system"
    if not any(hierarchy == "0" and controllers == "" for hierarchy, controllers, _ in own):
        return "no cgroup v2 hierarchy here"
    if any("memory" in controllers.split(",") for _, controllers, _ in own):
        return "the memory controller is in a cgroup v1 hierarchy here, not in cgroup v2"
    return "cgroup v2 limits are not built into distrib yet"


def human(size: int) -> str:
    """``size`` bytes as the owner would write it: 300M, 8G."""
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return f"{size:,} bytes"


@dataclass
class MemoryWatch:
    """Limits in bytes (None: none) and the processes sampled."""

    per_task: int | None = None
    total: int | None = None
    # Where each limit was set, as a stop's reason names it (the owner's policy file, say)
    per_task_setting: str = "--max-task-memory"
    total_setting: str = "--max-memory"

    def __post_init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    @property
    def limit(self) -> int:
        """The most one task may use here (0: no limit)."""
        limits = [x for x in (self.per_task, self.total) if x]
        return min(limits) if limits else 0

    def over(self, running: dict[int, int], idle: dict[int, int], name: str,
             templates: tuple[int, ...] = ()) -> list[tuple[int, str, int]]:
        """(executor, why, limit) to stop, given the pids of executors running a task
        (``running``, by executor id) and of the others (``idle``); ``name``: the worker's.
        ``limit`` is the per-task limit a task passed (it may run again only where the limit
        is higher), 0 for a stop over the total (any worker may run it again). Over the
        total, idle executors go first, then the largest running one."""
        if not self.limit:
            return []
        pids = {**running, **idle}
        # Resident sizes first (cheap): they bound both finer measures from above, which read
        # the kernel's map of a process (milliseconds for a large one) only when needed.
        rss = {ex: self._rss(pid) for ex, pid in pids.items()}
        sizes = {ex: (self._sizes(pids[ex])[0] if self.per_task and size > self.per_task
                      else size) for ex, size in rss.items()}
        self._procs = {pid: p for pid, p in self._procs.items()
                       if pid in pids.values() or pid in templates}
        out: list[tuple[int, str, int]] = []
        if self.per_task:
            for ex in running:
                if sizes[ex] > self.per_task:
                    out.append((ex, f"it used {sizes[ex] / 1e6:,.0f} MB, more than worker "
                                    f"{name}'s memory limit for a task "
                                    f"({human(self.per_task)}, its {self.per_task_setting})",
                                self.per_task))
        total = sum(rss.values())
        if self.total and not out and total > self.total:
            # Proportional shares, the templates' too: the pages all of them map count once.
            total = sum(self._sizes(pid)[1] for pid in (*pids.values(), *templates))
            sizes = {ex: self._sizes(pid)[0] for ex, pid in pids.items()}
        if self.total and not out and total > self.total:
            if idle:
                return [(ex, "idle, over the executors' memory limit", 0) for ex in idle]
            if running:
                largest = max(running, key=lambda ex: sizes[ex])
                out.append((largest, f"the executors of worker {name} used {total / 1e6:,.0f} "
                                     f"MB together, more than its memory limit "
                                     f"({human(self.total)}, its {self.total_setting}), and "
                                     f"this task's was the largest "
                                     f"({sizes[largest] / 1e6:,.0f} MB)", 0))
        return out

    def _rss(self, pid: int) -> int:
        try:
            return int(self._proc(pid).memory_info().rss)
        except psutil.Error:
            return 0

    def _proc(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def _sizes(self, pid: int) -> tuple[int, int]:
        """(memory only ``pid`` holds, its proportional share of all it maps), in bytes;
        its resident size for both where the kernel does not tell them apart."""
        try:
            proc = self._proc(pid)
            try:
                full = proc.memory_full_info()
                return int(full.uss), int(full.pss)
            except (psutil.AccessDenied, AttributeError):  # (no smaps: not Linux, say)
                rss = int(proc.memory_info().rss)
                return rss, rss
        except psutil.Error:
            return 0, 0

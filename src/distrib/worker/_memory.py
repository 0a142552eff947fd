"""The owner's memory limits: per task (``--max-task-memory``) and for all executors together
(``--max-memory``), enforced by sampling the executors' resident memory (psutil).

Pure but for the sampling: the daemon asks ``over()`` at each tick which executors to stop and
why. A task's memory is its executor's and that of every process below it (what the task
started, and what those left: the executor is their subreaper). An executor over the per-task
limit is stopped, with its whole tree; over the total, the largest executor running a task
is. Executors forked from a template share the pages it filled (the modules it imported, their
data): a task alone in its executor is charged the memory only its executor holds (its unique
set), a task with processes of its own each one's proportional share, and the total adds every
process's proportional share, so shared pages count once. Sampling every tick (a quarter of a
second) lets a fast allocation pass the limit briefly before it is stopped; cgroups would cap
it exactly, and are not used yet (``why_no_cgroup`` says what this machine offers, for the
log).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from msgspec import Struct, field

if TYPE_CHECKING:
    import psutil  # (imported where a limit is sampled: most daemons set none)


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


class MemoryWatch(Struct):
    """Limits in bytes (None: none) and the processes sampled."""

    per_task: int | None = None
    total: int | None = None
    # Where each limit was set, as a stop's reason names it (the owner's policy file, say)
    per_task_setting: str = "--max-task-memory"
    total_setting: str = "--max-memory"
    _procs: dict[int, psutil.Process] = field(default_factory=dict)
    _sampled: dict[int, tuple[int, int]] = field(default_factory=dict)  # pid -> _sizes, in
    # this over() call

    @property
    def limit(self) -> int:
        """The most one task may use here (0: no limit)."""
        limits = [x for x in (self.per_task, self.total) if x]
        return min(limits) if limits else 0

    def over(self, running: dict[int, int], idle: dict[int, int], name: str,
             templates: tuple[int, ...] = (), trees: dict[int, list[int]] | None = None
             ) -> list[tuple[int, str, int]]:
        """(executor, why, limit) to stop, given the pids of executors running a task
        (``running``, by executor id) and of the others (``idle``), and the processes below
        each (``trees``: what its tasks started); ``name``: the worker's. ``limit`` is the
        per-task limit a task passed (it may run again only where the limit is higher), 0
        for a stop over the total (any worker may run it again). Over the total, idle
        executors go first, then the largest running one."""
        if not self.limit:
            return []
        self._sampled = {}
        pids = {**running, **idle}
        members = {ex: (pid, *(trees or {}).get(ex, ())) for ex, pid in pids.items()}
        # Resident sizes first (cheap): they bound both finer measures from above, which read
        # the kernel's map of a process (milliseconds for a large one) only when needed.
        rss = {ex: sum(self._rss(pid) for pid in tree) for ex, tree in members.items()}
        charges = {ex: (self._charge(members[ex]) if self.per_task and size > self.per_task
                        else _Charge(size, members[ex][0], size)) for ex, size in rss.items()}
        alive = {pid for tree in members.values() for pid in tree} | set(templates)
        self._procs = {pid: p for pid, p in self._procs.items() if pid in alive}
        out: list[tuple[int, str, int]] = []
        if self.per_task:
            for ex in running:
                charge = charges[ex]
                if charge.total > self.per_task:
                    out.append((ex, f"it used {charge.total / 1e6:,.0f} MB"
                                    f"{_started(members[ex])}, more than worker {name}'s "
                                    f"memory limit for a task ({human(self.per_task)}, its "
                                    f"{self.per_task_setting}){_child(members[ex], charge)}",
                                self.per_task))
        total = sum(rss.values())
        if self.total and not out and total > self.total:
            # Proportional shares, the templates' too: the pages all of them map count once.
            total = sum(self._sizes(pid)[1] for pid in (*alive,))
            charges = {ex: self._charge(tree) for ex, tree in members.items()}
        if self.total and not out and total > self.total:
            if idle:
                return [(ex, "idle, over the executors' memory limit", 0) for ex in idle]
            if running:
                largest = max(running, key=lambda ex: charges[ex].total)
                charge = charges[largest]
                out.append((largest, f"the executors of worker {name} used {total / 1e6:,.0f} "
                                     f"MB together, more than its memory limit "
                                     f"({human(self.total)}, its {self.total_setting}), and "
                                     f"this task's was the largest "
                                     f"({charge.total / 1e6:,.0f} MB"
                                     f"{_started(members[largest])})"
                                     f"{_child(members[largest], charge)}", 0))
        return out

    def _charge(self, tree: tuple[int, ...]) -> _Charge:
        """What a task is charged for its executor and the processes below it: the memory only
        the executor holds when it is alone; with processes it started, each one's
        proportional share (what they share, as a fork's pages, counts once)."""
        if len(tree) == 1:
            size = self._sizes(tree[0])[0]
            return _Charge(size, tree[0], size)
        shares = {pid: self._sizes(pid)[1] for pid in tree}
        largest = max(shares, key=lambda pid: shares[pid])
        return _Charge(sum(shares.values()), largest, shares[largest])

    def _rss(self, pid: int) -> int:
        import psutil

        try:
            return int(self._proc(pid).memory_info().rss)
        except psutil.Error:
            return 0

    def _proc(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            import psutil

            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def _sizes(self, pid: int) -> tuple[int, int]:
        """(memory only ``pid`` holds, its proportional share of all it maps), in bytes;
        its resident size for both where the kernel does not tell them apart."""
        if pid not in self._sampled:
            self._sampled[pid] = self._sample(pid)
        return self._sampled[pid]

    def _sample(self, pid: int) -> tuple[int, int]:
        import psutil

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


class _Charge(Struct, frozen=True):
    """A task's memory (bytes), and its largest process with that one's part."""

    total: int
    largest: int
    largest_size: int


def _started(tree: tuple[int, ...]) -> str:
    n = len(tree) - 1
    return f" with {n} process{'es' if n > 1 else ''} it started" if n else ""


def _child(tree: tuple[int, ...], charge: _Charge) -> str:
    """The task's largest process, named when it is not the executor but one it started."""
    if charge.largest == tree[0]:
        return ""
    return (f"; its largest process: a child process of the task (pid {charge.largest}, "
            f"{charge.largest_size / 1e6:,.0f} MB)")

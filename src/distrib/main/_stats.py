"""What the dashboard shows: counts kept by the I/O thread, and the snapshot it publishes.

Only a session with a dashboard keeps a ``Stats``. The I/O thread counts each call as it is
taken, settled or retried, and about twice a second builds a new snapshot (plain dicts and
lists, never changed after) that it swaps in with one assignment: the dashboard's server reads
the latest one and takes no lock the I/O thread would wait on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from msgspec import Struct, field

from distrib._response import Response
from distrib.main._link import Link
from distrib.wire._link import LinkState

if TYPE_CHECKING:
    from distrib.main._scheduler import Scheduler
    from distrib.main._tracked import Task
    from distrib.workspace._manifest import Distribution

MAX_RUN = 1e7  # seconds: a reported run time beyond this (or not a number) is ignored
RUN_TIMES = 1000  # recent run times kept per function, for the p95
FAILURES = 20  # recent failures shown
THROUGHPUT_SECONDS = 600  # the chart's span: one point a second


class FunctionStats(Struct):
    """The calls of one function."""

    submitted: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    placed: int = 0  # calls made inside tasks that their workers placed themselves (direct):
    # this Main hears only that they were made
    run_total: float = 0.0  # seconds, over ``runs`` runs reported with their time
    runs: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RUN_TIMES))


def error_type(exc: BaseException) -> str:
    """``ValueError``, or ``module.Name`` for an exception not built in."""
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"


class Stats:
    """Counts of one session's calls, by function and by worker (I/O thread only)."""

    def __init__(self, workspace_bytes: int) -> None:
        self.functions: dict[str, FunctionStats] = {}
        self.by_worker: dict[str, int] = {}  # worker link -> calls whose outcome it reported
        self.failures: deque[dict[str, Any]] = deque(maxlen=FAILURES)
        self.settled_total = 0
        self.throughput: deque[tuple[float, float]] = deque(maxlen=THROUGHPUT_SECONDS)
        self._sampled = (time.monotonic(), 0)  # (when, settled_total then)
        self.known: dict[str, tuple[str, str, int]] = {}  # link -> (platform, Python, slots)
        self.workspace_bytes = workspace_bytes

    def _of(self, name: str) -> FunctionStats:
        stats = self.functions.get(name)
        if stats is None:
            stats = self.functions[name] = FunctionStats()
        return stats

    def submitted(self, name: str) -> None:
        self._of(name).submitted += 1

    def placed(self, name: str) -> None:
        """A worker placed a call of ``name`` itself (``Placed``)."""
        self._of(name[:200]).placed += 1

    def ran(self, name: str, reported: str) -> None:
        """A run of ``name`` took ``reported`` seconds, as its worker says."""
        try:
            seconds = float(reported)
        except ValueError:
            return
        if not 0 <= seconds < MAX_RUN:
            return
        stats = self._of(name)
        stats.run_total += seconds
        stats.runs += 1
        stats.recent.append(seconds)

    def counted(self, task: Task, worker: str = "", reported_by: str = "",
                retried: bool = False) -> None:
        """``task`` settled (its Response finished: counted once), or (``retried``) goes to
        another try. ``worker``: where it was, by name; ``reported_by``: the link of the
        worker that reported its outcome, if one did."""
        if task.counted:
            return
        if not task.response._is_pending():
            task.counted = True
            self._settled(task.name, task.task_id, task.response, worker)
            if reported_by:
                self.by_worker[reported_by] = self.by_worker.get(reported_by, 0) + 1
        elif retried:
            self._of(task.name).retried += 1

    def _settled(self, name: str, task_id: int, response: Response[Any], worker: str) -> None:
        stats = self._of(name)
        self.settled_total += 1
        if response._was_cancelled():  # (lock-free readers: the locked ones cost W1 a bit)
            stats.cancelled += 1
            return
        exc = response._settled_error()
        if exc is None:
            stats.done += 1
            return
        stats.failed += 1
        try:
            message = str(exc)[:300]
        except Exception:  # (its __str__ may need what did not travel)
            message = f"<{error_type(exc)} that cannot be shown>"
        self.failures.appendleft({
            "time": time.time(), "function": name, "task": task_id, "type": error_type(exc),
            "message": message, "worker": worker})

    def sample(self, now: float) -> None:
        """One point of the throughput chart a second: calls settled per second since the
        last."""
        when, count = self._sampled
        if now - when >= 1.0:
            self.throughput.append((time.time(), (self.settled_total - count) / (now - when)))
            self._sampled = (now, self.settled_total)


def _p95(values: deque[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def _worker_state(scheduler: Scheduler, link: Link) -> str:
    view = scheduler.workers.get(link.link_id)
    if link.state is LinkState.READY:
        if view is not None and view.unable:
            return "cannot provide the environment"
        if link.building:
            return "building an environment"
        return "ready" if link.worker_state == "serving" else str(link.worker_state)
    if link.state is LinkState.CONNECTING and link.reason:
        return "lost"  # (and being tried again)
    return {LinkState.NEW: "connecting", LinkState.CONNECTING: "connecting",
            LinkState.LOST: "lost",
            LinkState.REFUSED: "refused", LinkState.AUTH_FAILED: "refusing keys"}[link.state]


def snapshot(stats: Stats, links: Iterable[Link], scheduler: Scheduler, dist: Distribution,
             main: dict[str, Any]) -> dict[str, Any]:
    """Everything the dashboard shows, as JSON-ready values (built by the I/O thread): the
    ``links`` to workers, the ``scheduler``'s view of them, the workspace ``dist`` and what
    the ``main`` says of itself."""
    at_workers: dict[str, int] = {}  # sent, not finished: running or queued on the worker
    workers = []
    has_workspace = []
    for link in links:
        view = scheduler.workers.get(link.link_id)
        inflight = busy = 0
        if view is not None:  # (a worker lost keeps what it was)
            stats.known[link.link_id] = (view.platform, ", ".join(view.pythons or (view.python,)),
                                         view.slots)
            inflight, busy = len(view.inflight), min(view.inflight_slots, view.slots)
            for task in view.inflight.values():
                at_workers[task.name] = at_workers.get(task.name, 0) + 1
        platform, python, slots = stats.known.get(link.link_id, ("", "", 0))
        if link.has_workspace:
            has_workspace.append(link.name or link.address)
        workers.append({
            "name": link.name, "address": link.address, "platform": platform, "python": python,
            "slots": slots, "busy": busy, "queued": max(0, inflight - busy),
            "state": _worker_state(scheduler, link),
            "reason": link.reason if view is None else (view.unable or ""),
            "done": stats.by_worker.get(link.link_id, 0),
            # (the link's round trip as measured, ms; None until its first Pong)
            "round_trip_ms": round(view.round_trip * 1000, 1) if view and view.round_trip
            else None,
        })
    functions = []
    totals = dict.fromkeys(("submitted", "pending", "at_workers", "done", "failed", "retried",
                            "cancelled", "placed"), 0)
    for name, f in stats.functions.items():
        counts = {"submitted": f.submitted, "at_workers": at_workers.get(name, 0), "done": f.done,
                  "failed": f.failed, "retried": f.retried, "cancelled": f.cancelled,
                  "placed": f.placed}
        counts["pending"] = max(0, f.submitted - f.done - f.failed - f.cancelled
                                - counts["at_workers"])
        for key, count in counts.items():
            totals[key] += count
        functions.append({"name": name, **counts, "p95": _p95(f.recent),
                          "mean": f.run_total / f.runs if f.runs else None})
    return {
        "time": time.time(),
        "main": main,
        "totals": totals,
        "workers": workers,
        "functions": functions,
        "throughput": list(stats.throughput),
        "failures": list(stats.failures),
        "workspace": {"id": dist.dist_id, "root": str(dist.root), "files": len(dist.entries),
                      "bytes": stats.workspace_bytes, "workers": has_workspace},
    }

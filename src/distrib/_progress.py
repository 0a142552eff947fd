"""Progress of a set of calls: a rich bar on stderr when it is a terminal (done / total,
failures, rate, time left, slots busy across workers), else one summary line at the end.

Counting costs the I/O thread one list append per finished call (a done callback); drawing
happens in a thread of its own, ten times a second.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from distrib._response import Response, as_completed

T = TypeVar("T")
REFRESH = 0.1  # seconds between redraws
_live: weakref.WeakSet[Tracker] = weakref.WeakSet()  # drawing: their last word comes at exit


@atexit.register
def _close_all() -> None:
    """At exit (a script that ends as its last results arrive), each bar draws its final
    state, or its summary line is printed, before the drawing threads are gone."""
    for tracker in list(_live):
        tracker.finish(timeout=0.5)  # (the last results' callbacks may be running)


def _slots() -> tuple[int, int]:
    """(slots busy, slots offered) across the workers of this Main's session, as it sees them."""
    from distrib.main import _current

    session = _current._session
    if session is None:
        return 0, 0
    try:
        workers = list(session.scheduler.workers.values())  # (read as the I/O thread changes it)
    except RuntimeError:
        return 0, 0
    return sum(min(w.inflight_slots, w.slots) for w in workers), sum(w.slots for w in workers)


class Tracker:
    """Counts the calls of ``responses`` as they finish and draws their progress until all
    have (``close`` ends it early)."""

    def __init__(self, responses: list[Response[Any]], description: str = "") -> None:
        self.total = len(responses)
        self.description = description or (responses[0].name if responses else "calls")
        self._done: list[bool] = []  # one per finished call: whether it failed (append is
        # atomic; a cancelled call is finished, not failed)
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._draw, name="distrib-progress", daemon=True)
        for response in responses:
            response.add_done_callback(self._count)
        _live.add(self)
        self._thread.start()

    def _count(self, response: Any) -> None:
        self._done.append(not response.cancelled() and response.exception(0) is not None)

    def finish(self, timeout: float = 5.0) -> None:
        """Every call finished: end once each is counted (their callbacks run just after the
        waiters wake)."""
        deadline = time.monotonic() + timeout
        while len(self._done) < self.total and time.monotonic() < deadline:
            time.sleep(0.001)
        self.close()

    def close(self) -> None:
        self._stop.set()
        _live.discard(self)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _draw(self) -> None:
        if sys.stderr.isatty():
            self._draw_bar()
        else:
            while len(self._done) < self.total and not self._stop.wait(REFRESH):
                pass
        done, failed = len(self._done), sum(self._done)
        seconds = time.monotonic() - self._start
        if not sys.stderr.isatty():
            print(f"distrib: {self.description}: {done}/{self.total} done, {failed} failed, "
                  f"in {seconds:.1f} s ({done / max(seconds, 1e-9):,.1f}/s)", file=sys.stderr,
                  flush=True)

    def _draw_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
            TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[failed]} failed"),
                       TextColumn("{task.fields[rate]}/s"), TimeRemainingColumn(),
                       TextColumn("slots {task.fields[slots]}"),
                       console=Console(stderr=True), transient=False, auto_refresh=False)
        with bar:
            task = bar.add_task(self.description, total=self.total, failed=0, rate="0.0",
                                slots="0/0")
            while True:
                stopping = len(self._done) >= self.total or self._stop.is_set()
                done, failed = len(self._done), sum(self._done)
                busy, offered = _slots()
                seconds = max(time.monotonic() - self._start, 1e-9)
                bar.update(task, completed=done, failed=failed, rate=f"{done / seconds:,.1f}",
                           slots=f"{busy}/{offered}")
                bar.refresh()
                if stopping or self._stop.wait(REFRESH):
                    if not stopping:
                        continue  # (one last draw after the stop)
                    break


def progress(responses: Iterable[Response[T]], description: str = "",
             timeout: float | None = None) -> Iterator[Response[T]]:
    """Yield ``responses`` as they finish, drawing their progress on stderr: a bar on a
    terminal (done / total, failures, rate, time left, slots busy across workers), else one
    summary line at the end. ``WaitTimeout`` as for ``as_completed``."""
    given = list(responses)
    tracker = Tracker(given, description)
    try:
        yield from as_completed(given, timeout)
    except BaseException:
        tracker.close()
        raise
    tracker.finish()

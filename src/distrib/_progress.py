"""Progress of a set of calls: a rich bar on stderr when it is a terminal (done / total,
failures, rate, time left, slots busy across workers), else one summary line at the end.

Counting and drawing happen in a thread of their own, ten times a second: it reads the state of
the calls that finished since (no lock is taken) and the slot figures the session publishes, and
the I/O thread does nothing more than without progress. ``_waiting.progress`` and
``gather(progress=True)`` draw with it. While bars are drawn, what is written to stderr (log
handlers included) is printed above them.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
import weakref
from typing import Any

from distrib import _response
from distrib._response import Response

REFRESH = 0.1  # seconds between redraws
_live: weakref.WeakSet[Tracker] = weakref.WeakSet()  # drawing: their last word comes at exit
# One display for all the bars drawn at once, a row each (two would overwrite one line)
_board: Any = None
_rows = 0
_board_lock = threading.Lock()
# Log handlers writing to the terminal, sent through the display while it is drawn, with the
# stream each had: a line written straight to the terminal would end the bar's line.
_moved: list[tuple[logging.StreamHandler[Any], Any]] = []


@atexit.register
def _close_all() -> None:
    """At exit (a script that ends as its last results arrive), each bar draws its final
    state, or its summary line is printed, before the drawing threads are gone."""
    for tracker in list(_live):
        tracker.close()


def _slots() -> tuple[int, int]:
    """(slots busy, slots offered) across the workers of this Main's session, as it last
    published them (``main._current.slot_figures``)."""
    from distrib.main import _current  # (here: executors import distrib, not the session)

    return _current.slot_figures()


class Tracker:
    """Counts the calls of ``responses`` as they finish and draws their progress until all
    have (``close`` ends it early, after a last count)."""

    def __init__(self, responses: list[Response[Any]], description: str = "") -> None:
        self.total = len(responses)
        self.description = description or (responses[0].name if responses else "calls")
        self._calls = list(responses)
        self._next = 0  # calls before it are counted (only the drawing thread changes it)
        self.done = 0  # finished: with a result or an error
        self.failed = 0
        self.cancelled = 0  # (not counted as done)
        self._start = time.monotonic()
        self._stop = threading.Event()
        # The row is added here, not in the drawing thread, so that bars made one after the
        # other keep that order on the screen (threads join the display in any order).
        self._row = _join_board(self.description, self.total) if sys.stderr.isatty() else None
        self._thread = threading.Thread(target=self._draw, name="distrib-progress", daemon=True)
        _live.add(self)
        _response.after_wait = draw_settled
        self._thread.start()

    def _count(self, last: bool = False) -> None:
        """Count the calls that finished, in order up to the first that has not (calls mostly
        finish in the order they were made, so each is looked at about once); ``last``:
        every call. Reading a call's state takes no lock: the I/O thread is not slowed."""
        calls, i = self._calls, self._next
        while i < len(calls) and not calls[i]._is_pending():
            self._classify(calls[i])
            i += 1
        self._next = i
        if last:
            for response in calls[i:]:
                if not response._is_pending():
                    self._classify(response)
            self._next = len(calls)

    def _classify(self, response: Response[Any]) -> None:
        if response._was_cancelled():
            self.cancelled += 1
        else:
            self.done += 1
            self.failed += response._settled_error() is not None

    @property
    def _pending(self) -> bool:
        return self._next < len(self._calls)

    def settled(self) -> bool:
        """(any thread) Have all its calls finished? (Read without a lock, as counting is.)"""
        return not any(r._is_pending() for r in self._calls[self._next:])

    def close(self) -> None:
        self._stop.set()
        _live.discard(self)
        if not _live:
            _response.after_wait = None
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _draw(self) -> None:
        if self._row is not None:
            self._draw_bar(*self._row)
        else:
            while self._pending and not self._stop.wait(REFRESH):
                self._count()
            self._count(last=True)
        seconds = time.monotonic() - self._start
        if self._row is None:
            print(f"distrib: {self.description}: {self.done}/{self.total} done, "
                  f"{self._troubles()}, in {seconds:.1f} s "
                  f"({self.done / max(seconds, 1e-9):,.1f}/s)", file=sys.stderr, flush=True)

    def _troubles(self) -> str:
        return f"{self.failed} failed" + (f", {self.cancelled} cancelled" if self.cancelled
                                          else "")

    def _draw_bar(self, bar: Any, task: Any) -> None:
        try:
            slots = "0/0"
            while True:
                stopping = self._stop.is_set()
                self._count(last=stopping)
                busy, offered = _slots()
                if offered:  # (after the session ends, the last reading stands)
                    slots = f"{busy}/{offered}"
                seconds = max(time.monotonic() - self._start, 1e-9)
                bar.update(task, completed=self.done, troubles=self._troubles(),
                           rate=f"{self.done / seconds:,.1f}", slots=slots)
                bar.refresh()
                if stopping or not self._pending:
                    break
                self._stop.wait(REFRESH)
        finally:
            _leave_board()


def draw_settled() -> None:
    """The script holds the results: each bar whose calls have all finished draws its last
    state (or prints its summary line) now, before what the script writes next, rather than
    up to ``REFRESH`` later, below it."""
    for tracker in list(_live):
        if tracker.settled():
            tracker.close()


def _join_board(description: str, total: int) -> tuple[Any, Any]:
    """A row for a bar on the display the bars drawn now share (started by the first): the
    display and the row's task id."""
    global _board, _rows
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeRemainingColumn

    with _board_lock:
        if _board is None:
            _board = Progress(TextColumn("{task.description}"), BarColumn(),
                              MofNCompleteColumn(), TextColumn("{task.fields[troubles]}"),
                              TextColumn("{task.fields[rate]}/s"), TimeRemainingColumn(),
                              TextColumn("slots {task.fields[slots]}"),
                              console=Console(stderr=True), transient=False,
                              auto_refresh=False,
                              # The script's prints go above the bars only when they would
                              # reach the same terminal: a redirected stdout keeps its output.
                              redirect_stdout=sys.stdout is not None and sys.stdout.isatty())
            terminal = sys.stderr
            _board.start()  # (sys.stderr is now rich's, which prints above the bars)
            if sys.stderr is not terminal:
                _move_handlers(terminal, sys.stderr)
        _rows += 1
        return _board, _board.add_task(description, total=total, troubles="0 failed",
                                       rate="0.0", slots="0/0")


def _leave_board() -> None:
    """A bar is done; the last one stops the display (its rows stay on the screen)."""
    global _board, _rows
    with _board_lock:
        _rows -= 1
        if _rows == 0 and _board is not None:
            _board.refresh()
            _board.stop()
            _board = None
            for handler, stream in _moved:
                handler.setStream(stream)
            _moved.clear()


def _move_handlers(terminal: Any, display: Any) -> None:
    """Log handlers that write to ``terminal`` (distrib's own, one of ``basicConfig``) write
    through ``display`` until the bars end."""
    known = list(logging.Logger.manager.loggerDict.values())  # (other threads add loggers)
    loggers = [logging.getLogger(), *(x for x in known if isinstance(x, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is terminal:
                _moved.append((handler, terminal))
                handler.setStream(display)

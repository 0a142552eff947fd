"""What a task left running when it returned, seen from its executor: threads that run
Python, and processes below the executor. Either would run into the executor's next tasks:
the executor then ends (``_tasks``)."""

from __future__ import annotations

import _thread
import os
import sys
import threading
from collections.abc import Callable

from distrib import _process, _runtime


class Leftovers:
    """What a task left running when it returned: threads that run Python (a task's own, or
    a library's it started), and processes (this executor is their subreaper: whatever
    they start stays below it). Threads and children there before the first task (the
    executor's own, or the main script's import's) are not counted."""

    def __init__(self, own: Callable[[], tuple[threading.Thread | None, ...]]) -> None:
        self._own = own  # the executor's threads started since (reading its pipe, say)
        self._threads = set(sys._current_frames())
        self._known = set(self._threads)  # the threads last found to be the executor's own
        self._count = _thread._count()  # how many threads run Python (the main one aside)
        self._children = self._living_children() if _process.has_children() else set()

    def check(self) -> str:
        """What the task just ended left running, as the log says it ("" for nothing).
        (Threads that run no Python, as a numerical library's pool, are not counted.)"""
        threads = 0
        count = _thread._count()
        if count != self._count:  # (rarely: the executor's own threads do not end, and a
            # task's that are left make it end, so the same count means the same threads)
            self._count = count
            idents = sys._current_frames().keys()
            if idents - self._known:
                self._known = self._threads | _runtime.own_threads | {
                    t.ident for t in self._own() if t is not None and t.ident is not None}
                threads = len(idents - self._known)
        processes = 0
        if _process.has_children():  # (one system call when there is none: the usual case)
            _process.reap()
            if _process.has_children():
                processes = len(self._living_children() - self._children)
        if not threads and not processes:
            return ""
        parts = [f"{n} {one if n == 1 else many}" for n, one, many in
                 ((threads, "thread", "threads"), (processes, "process", "processes")) if n]
        return f"{' and '.join(parts)} running"

    @staticmethod
    def _living_children() -> set[int]:
        """This process's descendants that still run (its children, and theirs)."""
        procs = _process.table()
        return {pid for pid in _process.descendants(os.getpid(), _process.children(procs))
                if not procs[pid].zombie}

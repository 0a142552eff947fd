"""Processes tasks left to this daemon: found and killed, and what exited reaped.

As a subreaper, the daemon adopts what tasks left running when every process above it exited
(an executor that crashed, say, or one of its processes that did). Any child of the daemon
that it did not start (executors, templates, sandboxes' launchers, environment builds: the
``ours`` it is given) is a stray. A child outside the daemon's session is one at once: the
daemon starts all of its own in its session. One in it is a stray once seen at two looks in
a row: a process the daemon is starting shows up as its child just before the daemon lists
it among its own. In a sandbox, what an ended executor left goes to its process 1, the
template instead: any child of it but its executors and (in its session) the forks that
make them.
"""

from __future__ import annotations

import os

from distrib import _process


class Strays:
    """The daemon's looks for strays: it remembers the unknown children of its last look."""

    def __init__(self) -> None:
        self._suspects: set[int] = set()  # children in its session not known to be its own

    def sweep(self, procs: dict[int, _process.Entry], ours: set[int],
              boxed: dict[int, int], at_once: bool = False) -> int:
        """Kill the strays among ``procs`` (the whole tree below each): children of this
        process but for ``ours``, and children of the sandboxed templates ``boxed`` (pid:
        session) outside their session, but for ``ours``; ``at_once``: without a second
        look (the daemon is stopping). Then reap what exited (the first of ``ours`` met ends
        the reaping: they are waited for where they are started, and the rest waits for the
        next sweep). How many processes were killed."""
        me, session = os.getpid(), os.getsid(0)
        strays, suspects = [], set()
        for pid, entry in procs.items():
            if entry.zombie or pid in ours:
                continue
            if entry.ppid == me:
                if entry.session != session or at_once or pid in self._suspects:
                    strays.append(pid)
                else:
                    suspects.add(pid)
            elif entry.ppid in boxed and entry.session != boxed[entry.ppid]:
                strays.append(pid)
        self._suspects = suspects
        killed = _process.kill_trees(strays) if strays else 0
        while True:
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return killed
            if found is None or found.si_pid in ours or found.si_pid == 0:
                return killed
            try:
                os.waitpid(found.si_pid, 0)
            except ChildProcessError:
                return killed

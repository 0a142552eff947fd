"""Processes tasks left to this daemon: found and killed, and what exited reaped.

As a subreaper, the daemon adopts what tasks left running when every process above it exited
(an executor that crashed, say, or one of its processes that did). A stray is told by its
session: executors and templates each start one of their own, which nothing below them can
leave for the daemon's, where the daemon's own helpers (environment builds) are. In a
sandbox, what an ended executor left goes to its process 1, the template instead: any child
of it but its executors and (in its session) the forks that make them.
"""

from __future__ import annotations

import os

from distrib import _process


def sweep(procs: dict[int, _process.Entry], ours: set[int], boxed: dict[int, int]) -> int:
    """Kill the strays among ``procs`` (the whole tree below each): children of this process
    outside its session, and children of the sandboxed templates ``boxed`` (pid: session)
    outside theirs, but for ``ours`` (executors, templates, builds). Then reap what exited
    (the first of ``ours`` met ends the reaping: they are waited for where they are started,
    and the rest waits for the next sweep). How many processes were killed."""
    me, session = os.getpid(), os.getsid(0)
    strays = [pid for pid, entry in procs.items() if entry.ppid == me and pid not in ours
              and entry.session != session and not entry.zombie]
    strays += [pid for pid, entry in procs.items() if entry.ppid in boxed
               and pid not in ours and entry.session != boxed[entry.ppid]
               and not entry.zombie]
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

"""How an executor process stands on its machine: at the owner's niceness, in a process
group (or, in a sandbox, a session) of its own, and gone with its daemon."""

from __future__ import annotations

import os
import time

from distrib import _process


def be_nice(nice: int) -> None:
    """Run at the owner's niceness, before any thread starts (threads inherit it)."""
    if nice > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
        except OSError:
            pass


def own_group(sandboxed: bool) -> None:
    """Leave the daemon's process group (a terminal's Ctrl-C, or a task's ``kill(0, ...)``,
    reaches a whole group). In a sandbox, leave the template's session too: whatever this
    process and its tasks start is then in another one, which no process can leave for the
    template's own (``setsid`` makes a new session; a process group joins only within its
    session): the daemon tells what an ended executor left to the template by its session.

    Outside a sandbox an executor stays in the daemon's session. A new session is a new
    scheduling group where the kernel groups by session (autogroup, on by default): each
    executor would then weigh as much as the daemon and its Main together, starving them
    of the turns that batch calls (the embedded cluster spent 25 % more CPU per call), and
    an owner's niceness would hold only within it. The daemon tells what it adopted there
    from its own helpers by keeping a list of those (``worker/_strays.py``)."""
    try:
        if sandboxed:
            os.setsid()
            _nice_group()
        else:
            os.setpgid(0, 0)
    except OSError:  # (a session or group leader already)
        pass


def _nice_group() -> None:
    """Give this process's new scheduling group (autogroup) its niceness: the owner's nice
    then holds against the machine's other sessions, not only within the group."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > 0:
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(nice))
        except OSError:  # (no autogroups in this kernel)
            pass


def watch_parent(parent: int) -> None:
    """Leave when orphaned, with what this executor's tasks started (a daemon killed with -9
    cannot stop us; nothing of a task outlives its worker). In a sandbox the daemon is
    outside this PID namespace, parent 0: the sandbox ends with it, all it holds too."""
    while parent:
        time.sleep(1.0)
        if os.getppid() != parent:
            _process.kill_trees([os.getpid()], with_roots=False)
            os._exit(70)

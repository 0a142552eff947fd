"""How an executor process stands on its machine: at the owner's niceness, in a process
group (or, in a sandbox, a session) of its own, and gone with its daemon."""

from __future__ import annotations

import errno
import os
import threading
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


# The group's niceness the kernel refused at the start (see _set_group_nice): asked again.
_group_nice_pending = 0
_GROUP_NICE_RETRY = 0.05  # seconds between tries: the kernel allows one change per 0.1 s


def _nice_group() -> None:
    """Give this process's new scheduling group (autogroup) its niceness: the owner's nice
    then holds against the machine's other sessions, not only within the group."""
    global _group_nice_pending
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > 0 and _set_group_nice(nice) is False:
        _group_nice_pending = nice


def _set_group_nice(nice: int) -> bool | None:
    """True when set, None when it cannot be (no autogroups in this kernel), False when the
    kernel said "not now": without CAP_SYS_ADMIN (never, in a sandbox) it allows one change
    of any group's niceness per 0.1 s on the whole machine, so executors that start together
    in sandboxes take turns."""
    try:
        fd = os.open("/proc/self/autogroup", os.O_WRONLY)
    except OSError:
        return None
    try:
        os.write(fd, str(nice).encode())  # (unbuffered: a refusal is this call's error)
        return True
    except OSError as e:
        return False if e.errno == errno.EAGAIN else None
    finally:
        os.close(fd)


def start_watching(parent: int) -> None:
    """Start the thread that watches for the daemon's end and asks again for the group's
    niceness the kernel refused, when there is either to do."""
    if parent or _group_nice_pending:
        threading.Thread(target=_watch, args=(parent,), daemon=True,
                         name="distrib-watch").start()


def _watch(parent: int) -> None:
    """Ask for the group's niceness until the kernel allows it, from this thread: the
    executor does not wait for its turn. Then leave when orphaned, with what this
    executor's tasks started (a daemon killed with -9 cannot stop us; nothing of a task
    outlives its worker). In a sandbox the daemon is outside this PID namespace, parent 0:
    the sandbox ends with it, all it holds too."""
    global _group_nice_pending
    while _group_nice_pending:
        time.sleep(_GROUP_NICE_RETRY)
        if _set_group_nice(_group_nice_pending) is not False:
            _group_nice_pending = 0
        _leave_if_orphaned(parent)
    if not parent:  # (the executor's own threads do not end: ``_leftovers`` counts on it)
        threading.Event().wait()
    while True:
        time.sleep(1.0)
        _leave_if_orphaned(parent)


def _leave_if_orphaned(parent: int) -> None:
    if parent and os.getppid() != parent:
        _process.kill_trees([os.getpid()], with_roots=False)
        os._exit(70)

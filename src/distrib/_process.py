"""Processes by pid: whether one exists, waiting for a child to exit (or a descriptor to be
readable) without polling, process trees (found, and killed whole), and this process's limit
of open descriptors."""

from __future__ import annotations

import logging
import os
import resource
import select
import signal
import sys
from typing import NamedTuple, Protocol

log = logging.getLogger("distrib")

OPEN_FILES = 1 << 16  # descriptors a process that listens lets itself open, when it may


class Waitable(Protocol):
    """A child process as ``subprocess.Popen`` offers it."""

    @property
    def pid(self) -> int: ...

    def wait(self, timeout: float | None = None) -> int: ...


def wait_exit(proc: Waitable, timeout: float) -> None:
    """``proc.wait(timeout)``, woken the moment the process exits (a pidfd) rather than by
    ``Popen.wait``'s polling, whose sleeps grow to 50 ms: a script's exit waits on this."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux 5.3+, or already reaped
        proc.wait(timeout)
        return
    try:
        readable(fd, timeout)
    finally:
        os.close(fd)
    proc.wait(0.5)  # reaps it (raises TimeoutExpired if it still runs)


def readable(fd: int, timeout: float | None) -> bool:
    """Whether ``fd`` has something to read (or its end closed) within ``timeout`` seconds
    (None: waits). With poll, not select: select fails on a descriptor past 1,023, and a
    daemon holding a thousand connections has those."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


def exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie too), whoever owns it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def started_at(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch as psutil's ``create_time``
    says it (a pid used again is another process), or None if it is gone or a zombie. Read
    from /proc where there is one: psutil's import is 20 ms of a warm script's start."""
    if not os.path.isdir("/proc/self"):
        return _started_at_psutil(pid)
    fields = _stat(pid)
    # (after the command's name: the state, field 3, ..., the start in clock ticks, field 22)
    if fields is None or len(fields) < 20 or fields[0] in _ENDED:
        return None
    try:
        with open("/proc/stat", "rb") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith(b"btime"))
    except (OSError, ValueError, StopIteration, IndexError):
        return _started_at_psutil(pid)
    return int(fields[19]) / os.sysconf("SC_CLK_TCK") + boot


def _started_at_psutil(pid: int) -> float | None:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except psutil.Error:
        return None


# --- process trees -----------------------------------------------------------------------------
# A task's processes are found by their parents, read from /proc (no psutil: an executor may run
# in a Python environment without it). Where there is no /proc, a tree is its root alone.

_PR_SET_CHILD_SUBREAPER = 36


class Entry(NamedTuple):
    """What /proc says of one process."""

    ppid: int
    session: int
    zombie: bool


def table() -> dict[int, Entry]:
    """Every process of the machine (this PID namespace's view), read in one pass."""
    out: dict[int, Entry] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if name.isdigit():
            _read_entry(int(name), out)
    return out


def _read_entry(pid: int, out: dict[int, Entry]) -> None:
    fields = _stat(pid)  # (state, ppid, process group, session, ...)
    if fields is not None and len(fields) >= 4:
        out[pid] = Entry(int(fields[1]), int(fields[3]), fields[0] in _ENDED)


_ENDED = (b"Z", b"X")  # the states of a process that exited (a zombie, or dead)


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command's name (in parentheses, and it may
    hold anything), from the state on; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:  # (it ended meanwhile)
        return None
    return data[data.rfind(b")") + 2:].split()


def table_of_children(parents: list[int]) -> dict[int, Entry]:
    """``parents`` and their children, as ``table`` has them: read from each of their threads'
    list of children where the kernel keeps one, which costs O(their children) rather than
    O(every process of the machine) (hundreds of daemons on one machine each looking every
    second); else the whole table."""
    if not _has_children_lists():
        return table()
    out: dict[int, Entry] = {}
    for pid in [pid for parent in parents for pid in _listed_children(parent)]:
        _read_entry(pid, out)
    out = {pid: e for pid, e in out.items() if e.ppid in parents}
    for pid in parents:  # (and the parents themselves)
        _read_entry(pid, out)
    return out


def table_of_tree(root: int) -> dict[int, Entry]:
    """``root`` and every process below it, as ``table`` has them, read down the lists of
    children as ``table_of_children`` does: a daemon watching its executors' memory four
    times a second reads its own tree, not every process of the machine; else the whole
    table."""
    if not _has_children_lists():
        return table()
    out: dict[int, Entry] = {}
    _read_entry(root, out)
    todo = [root] if root in out else []
    while todo:
        parent = todo.pop()
        for pid in _listed_children(parent):
            if pid not in out:
                _read_entry(pid, out)
                if pid in out and out[pid].ppid == parent:
                    todo.append(pid)
                else:  # (it ended, and its pid was taken, meanwhile)
                    out.pop(pid, None)
    return out


def _has_children_lists() -> bool:
    return os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _listed_children(parent: int) -> list[int]:
    """The children of ``parent``, from each of its threads' list (one may have forked)."""
    pids: list[int] = []
    try:
        threads = os.listdir(f"/proc/{parent}/task")
    except OSError:  # (it ended)
        return pids
    for tid in threads:
        try:
            with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                pids.extend(int(x) for x in f.read().split())
        except OSError:  # (the thread ended)
            continue
    return pids


def children(procs: dict[int, Entry]) -> dict[int, list[int]]:
    """Each process's children, by pid."""
    out: dict[int, list[int]] = {}
    for pid, entry in procs.items():
        out.setdefault(entry.ppid, []).append(pid)
    return out


def descendants(pid: int, kids: dict[int, list[int]]) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in kids.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def kill_trees(roots: list[int], with_roots: bool = True) -> int:
    """SIGKILL every process below ``roots`` (and the roots, if ``with_roots``); how many
    were signalled. Each is stopped first and the trees walked again until no new process
    shows up: a stopped process cannot fork, so none started meanwhile escapes."""
    roots = [pid for pid in roots if pid > 0]  # (0 and -1 would signal groups, or everyone)
    stopped: set[int] = set()
    if with_roots:
        for pid in roots:
            _signal(pid, signal.SIGSTOP)
    for _ in range(1000):  # (each round stops what the last one found; a tree is finite)
        kids = children(_trees(roots))
        found = [pid for root in roots for pid in descendants(root, kids)
                 if pid not in stopped]
        if not found:
            break
        for pid in found:
            _signal(pid, signal.SIGSTOP)
        stopped.update(found)
    for pid in [*(roots if with_roots else ()), *stopped]:
        _signal(pid, signal.SIGKILL)
    return len(stopped) + (len(roots) if with_roots else 0)


def renice_trees(roots: list[int], nice: int) -> int:
    """Set the niceness of every thread of ``roots`` and of the processes below them (on
    Linux, a niceness is each thread's own); how many threads refused it."""
    import psutil  # (here: only a renice, from the owner's policy, needs it)

    refused = 0
    for pid in roots:
        try:
            tree = [psutil.Process(pid)]
            tree += tree[0].children(recursive=True)
        except psutil.Error:
            continue
        for proc in tree:
            try:
                threads = [t.id for t in proc.threads()]
            except psutil.Error:
                continue
            for tid in threads:
                try:
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
                except ProcessLookupError:
                    pass
                except OSError:
                    refused += 1
    return refused


def _trees(roots: list[int]) -> dict[int, Entry]:
    """``roots`` and every process below them, as ``table`` has them: read down their lists
    of children (a worker stopping reads its executors' trees, not every process of the
    machine twice over for each; a quarter of its stop on a machine of a few hundred)."""
    if not _has_children_lists():
        return table()
    out: dict[int, Entry] = {}
    for root in roots:
        out.update(table_of_tree(root))
    return out


def _signal(pid: int, sig: int) -> None:
    if pid <= 0:
        return
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux): what a child started and left when it exited stays
    in this process's tree, where it can be counted, waited for and killed."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    import ctypes  # (here: an executor's alone calls it, every process imports this module)

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def has_children() -> bool:
    """Whether this process has a child, running or exited (one system call)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def reap() -> None:
    """Wait for the children of this process that exited (without waiting for the others)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return


def more_open_files(networked: bool) -> None:
    """Raise this process's limit of open descriptors towards ``OPEN_FILES``, as far as the
    hard limit lets it (a daemon, or a Main that listens for workers). Every connection,
    handshaken or not, holds one: anyone who reaches the port could otherwise hold the usual
    1,024 with idle connections, and then nothing else could connect, nor any file or process
    be opened ("Too many open files"), until libzmq dropped them. ``networked``: it listens on
    TCP (below 4,096 it warns)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= OPEN_FILES:
        return
    target = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    raised = soft
    # (macOS refuses more than its kernel's OPEN_MAX, 10,240, whatever the hard limit says)
    for tried in sorted({target, min(target, 10_240)}, reverse=True):
        if tried <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (tried, hard))
        except (ValueError, OSError) as exc:
            log.debug("could not raise the limit of open files from %d to %d: %s", soft,
                      tried, exc)
            continue
        raised = tried
        break
    if raised < 4096 and networked:
        log.warning("this process may hold at most %d open files (ulimit -n; hard limit %d): "
                    "a few hundred idle connections to its port can keep its peers out; raise "
                    "the hard limit", raised, hard)

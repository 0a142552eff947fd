"""The owner's control socket: ``distrib worker pause|resume|drain|state|stop`` reach a running
daemon through a Unix socket in a folder only the owner may open (mode 0700).

One socket per daemon, ``<cache>/control/<pid>.sock``; a client sends one command line and
reads one reply line. The daemon polls the listening socket with the rest of its loop.

Tasks run as the owner's user, so the folder's mode does not keep them out: the daemon asks
the system who connected (``SO_PEERCRED``) and refuses, before reading a byte, another user's
process (root excepted) and any process of its own tree, itself, its executors and whatever
they started (the daemon is their subreaper: a process a task left behind is still its
descendant). A refused client reads ``refused: ...`` and ``send`` raises ``ConnectionFailed``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path


from distrib._errors import ConfigError, ConnectionFailed
from distrib._process import exists

COMMANDS = ("pause", "resume", "drain", "state", "stop")
_TIMEOUT = 1.0  # seconds a client may take to send its command (the daemon's loop waits)
REFUSED = "refused: "  # how a refusal's reply begins


def folder(cache_dir: Path) -> Path:
    return cache_dir / "control"


class ControlSocket:
    """The listening end, in the daemon."""

    def __init__(self, cache_dir: Path) -> None:
        where = folder(cache_dir)
        where.mkdir(parents=True, exist_ok=True)
        os.chmod(where, 0o700)  # only the owner (and root) may connect
        for stale in where.glob("*.sock"):  # daemons that are gone
            if stale.stem.isdigit() and not exists(int(stale.stem)):
                stale.unlink(missing_ok=True)
        self.path = where / f"{os.getpid()}.sock"
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _at(self.path, self.sock.bind)
        self.sock.listen(8)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> tuple[socket.socket, str, tuple[int, str]] | None:
        """A waiting client, its command ("" if it sent none in time, or if it is refused)
        and, for a client that may not command this daemon, its pid and why; or None."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        pid, why = refusal(conn)
        if why:  # (what it sent is not read, nor waited for: it cannot hold the loop)
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.recv(64)  # (so that closing does not reset the connection under the reply)
            return conn, "", (pid, why)
        conn.settimeout(_TIMEOUT)
        try:
            line = conn.recv(64).decode("ascii", "replace").strip()
        except OSError:
            line = ""
        return conn, line, (pid, "")

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def _at(path: Path, call: Callable[[str], None]) -> None:
    """``call`` (bind or connect) with ``path``, or, past the length a Unix socket's path may
    have, with a short path to the same file through an open descriptor of its folder."""
    if len(os.fsencode(path)) < 100 or not Path("/proc/self/fd").is_dir():
        call(str(path))
        return
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        call(f"/proc/self/fd/{fd}/{path.name}")
    finally:
        os.close(fd)


def refusal(conn: socket.socket) -> tuple[int, str]:
    """The pid of the process at the other end of ``conn`` (-1 where the system does not say)
    and why it may not command this daemon ("" if it may)."""
    if not hasattr(socket, "SO_PEERCRED"):  # (Linux only: elsewhere the folder's mode alone)
        return -1, ""
    size = struct.calcsize("3i")
    try:
        pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                           size))
    except OSError as exc:
        return -1, f"its credentials cannot be read ({exc.strerror})"
    if uid not in (os.geteuid(), 0):
        return pid, f"it runs as another user (uid {uid})"
    if pid <= 0:
        return pid, "it runs where its process cannot be identified (another PID namespace)"
    return pid, _in_tree(pid)


def _in_tree(pid: int) -> str:
    """Why ``pid`` may not command this daemon: it is the daemon or one of its descendants
    (an executor, a task's process), or it is gone and cannot be checked; "" if neither."""
    import psutil  # (here: only a command on the control socket needs it)

    me = os.getpid()
    try:
        proc: psutil.Process | None = psutil.Process(pid)
        while proc is not None:
            if proc.pid == me:
                return ("it is this daemon itself" if pid == me else
                        "it is one of this daemon's own processes (a task's, or an executor)")
            proc = proc.parent()
    except psutil.Error:
        return "it ended before it could be checked"
    return ""


def reply(conn: socket.socket, text: str) -> None:
    try:
        conn.sendall(text.encode() + b"\n")
    except OSError:
        pass
    finally:
        conn.close()


def send(cache_dir: Path, command: str, pid: int | None = None) -> str:
    """Send ``command`` to the daemon ``pid`` (or the only one using ``cache_dir``); its
    answer. ``ConfigError`` naming the daemons found when it is not clear which one."""
    where = folder(cache_dir)
    live = sorted(int(p.stem) for p in where.glob("*.sock")
                  if p.stem.isdigit() and exists(int(p.stem)))
    if pid is None:
        if len(live) != 1:
            found = ", ".join(map(str, live)) or "none"
            raise ConfigError(f"{len(live)} running worker daemons use the cache {cache_dir} "
                              f"(pids: {found}); name one with --pid, or the cache with "
                              "--cache-dir")
        pid = live[0]
    elif pid not in live:
        raise ConfigError(f"no worker daemon with pid {pid} uses the cache {cache_dir}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10.0)
        _at(where / f"{pid}.sock", sock.connect)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(command.encode() + b"\n")  # (a refusal may come, and the socket
            # close, before the command is sent: the answer is read all the same)
        answer = _line(sock)
    if answer.startswith(REFUSED):
        raise ConnectionFailed(f"the worker daemon {pid} refused the command {command!r}: "
                               f"{answer.removeprefix(REFUSED)}")
    return answer


def _line(sock: socket.socket) -> str:
    """The daemon's one-line answer (what arrived, should it close the socket abruptly)."""
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()

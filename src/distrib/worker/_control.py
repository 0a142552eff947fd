"""The owner's control socket: ``distrib worker pause|resume|drain|state`` reach a running
daemon through a Unix socket in a folder only the owner may open (mode 0700).

One socket per daemon, ``<cache>/control/<pid>.sock``; a client sends one command line and
reads one reply line. The daemon polls the listening socket with the rest of its loop.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from distrib._errors import ConfigError
from distrib._process import exists

COMMANDS = ("pause", "resume", "drain", "state")
_TIMEOUT = 1.0  # seconds a client may take to send its command (the daemon's loop waits)


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

    def accept(self) -> tuple[socket.socket, str] | None:
        """A waiting client and its command ("" if it sent none in time), or None."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        conn.settimeout(_TIMEOUT)
        try:
            line = conn.recv(64).decode("ascii", "replace").strip()
        except OSError:
            line = ""
        return conn, line

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
        sock.sendall(command.encode() + b"\n")
        return sock.makefile().readline().strip()

"""Processes by pid: whether one exists, and waiting for a child to exit without polling."""

from __future__ import annotations

import os
import select
from typing import Protocol


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
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    proc.wait(0.5)  # reaps it (raises TimeoutExpired if it still runs)


def exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie too), whoever owns it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

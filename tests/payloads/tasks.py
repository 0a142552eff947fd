"""Task functions the integration tests ship in their temporary workspaces (as tasks.py)."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from pathlib import Path

from distrib import distributed


class Unpicklable(Exception):
    """An exception carrying a lock, which does not pickle: it comes back without it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@distributed
def ok(x: int) -> int:
    return x + 1


@distributed
def raiser(message: str) -> None:
    raise ValueError(message)  # the remote line tests look for


@distributed
def unpicklable_error() -> None:
    raise Unpicklable("cannot travel")


@distributed
def unpicklable_result() -> threading.Lock:
    return threading.Lock()


@distributed
def sleeper(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@distributed(retries=0)
def crash() -> None:
    os._exit(3)


@distributed(retries=0)
def segfault() -> None:
    ctypes.string_at(0)


def _hang_once(marker: str) -> str:
    """First run: write our pid to ``marker`` and hang (a test kills us); later runs return."""
    path = Path(marker)
    if path.exists():
        return f"retried after {path.read_text()}"
    path.write_text(str(os.getpid()))
    time.sleep(600)
    return "not killed"


hang_once = distributed(retries=3)(_hang_once)
hang_once_no_retry = distributed(retries=0)(_hang_once)


@distributed
def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


@distributed
def block_until(marker: str, release: str) -> str:
    """Say we started (``marker``), then wait until ``release`` exists (bounded)."""
    Path(marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released"


@distributed
def talk(n: int) -> int:
    print(f"line {n} to stdout")
    print(f"line {n} to stderr", file=__import__("sys").stderr)
    return n


@distributed
def length(data: bytes) -> int:
    return len(data)


@distributed
def echo(value: object) -> object:
    return value

"""The daemon's looks for strays, on real processes: a child it did not start is killed, one
in its session only when seen at two looks in a row (one it is starting shows up before it
is listed among its own), one in another session at once; its own are never killed."""

from __future__ import annotations

import subprocess
import sys

from distrib import _process
from distrib.worker._strays import Strays
from tests.helpers import wait_for

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def test_a_child_in_the_session_goes_at_the_second_look() -> None:
    proc = subprocess.Popen(SLEEP)
    try:
        strays = Strays()
        assert strays.sweep(_process.table(), set(), {}) == 0
        assert _alive(proc)
        assert strays.sweep(_process.table(), set(), {}) == 1
        wait_for(lambda: not _alive(proc), 30, "the stray to be gone")
    finally:
        proc.kill()
        proc.wait()


def test_a_child_in_another_session_goes_at_once() -> None:
    proc = subprocess.Popen(SLEEP, start_new_session=True)
    try:
        wait_for(lambda: _process.table()[proc.pid].session == proc.pid, 30,
                 "the child's own session")
        assert Strays().sweep(_process.table(), set(), {}) == 1
        wait_for(lambda: not _alive(proc), 30, "the stray to be gone")
    finally:
        proc.kill()
        proc.wait()


def test_the_daemons_own_children_stay() -> None:
    own = subprocess.Popen(SLEEP)
    other = subprocess.Popen(SLEEP, start_new_session=True)
    try:
        strays = Strays()
        for _ in range(3):
            assert strays.sweep(_process.table(), {own.pid, other.pid}, {}) == 0
        assert _alive(own) and _alive(other)
        # Stopping: what is left goes without a second look.
        assert Strays().sweep(_process.table(), {other.pid}, {}, at_once=True) == 1
        wait_for(lambda: not _alive(own), 30, "the stray to be gone")
        assert _alive(other)
    finally:
        for proc in (own, other):
            proc.kill()
            proc.wait()

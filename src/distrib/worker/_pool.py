"""Executor processes, seen from the daemon: spawn, send a task, read what comes back, kill.

Executors are fresh interpreters (``subprocess`` fork+exec, never a bare fork of the daemon)
that import one environment once and then run its tasks one by one. Each talks to the daemon
over a socketpair; the daemon polls the socket's file descriptor in its event loop.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distrib._process import wait_exit
from distrib.worker._isolation import remove_tree
from distrib.worker._pipe import Pipe, Verb

log = logging.getLogger("distrib.worker")

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


@dataclass(eq=False)
class ExecutorProcess:
    """One executor process and the daemon's end of its socketpair."""

    proc: subprocess.Popen[bytes]
    pipe: Pipe
    scratch: Path  # where it keeps its task layers, as <pid>-<n>

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fileno(self) -> int:
        return self.pipe.fileno()

    def run(self, tasks: list[tuple[int, list[Any]]]) -> None:
        """Hand tasks (key, call frames) to this executor, which runs them in order."""
        self.pipe.send_many([([Verb.RUN, key], [f.buffer if hasattr(f, "buffer") else f
                                                for f in frames]) for key, frames in tasks])

    def skip(self, key: int) -> None:
        """Ask the executor to drop task ``key`` if it has not started it."""
        self.pipe.send([Verb.SKIP, key])

    def read(self) -> tuple[list[Any], list[Any]]:
        """Read one whole message (header fields, payload). ``EOFError`` if it died."""
        return self.pipe.recv()

    def signal_kill(self) -> None:
        try:
            self.proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """Stop the process now and reap it."""
        self.signal_kill()
        self.pipe.close()
        try:
            wait_exit(self.proc, 5)
        except subprocess.TimeoutExpired:
            log.warning("executor %d did not exit after SIGKILL", self.proc.pid)
        for layer in self.scratch.glob(f"{self.proc.pid}-*"):
            remove_tree(layer)


def spawn(threads: int, env: Path, main: str | None, runs: Path, argv: list[str],
          forwarded: dict[str, str], python: Path | None = None) -> ExecutorProcess:
    """Start an executor whose environment tree is ``env``, for tasks of ``threads`` threads,
    importing the main script with the Main's ``argv`` and ``forwarded`` variables set (sent
    as its first message: an environment of any size fits there). ``python`` is the
    interpreter of a built Python environment (default: the daemon's own)."""
    ours, theirs = socket.socketpair()
    environ = dict(os.environ)
    for name in THREAD_VARS:
        environ[name] = str(threads)
    try:
        proc = subprocess.Popen(
            [str(python or sys.executable), "-P", "-m", "distrib.worker._child",
             str(theirs.fileno()), str(env), main or "", str(runs),
             str(python.parent.parent) if python else ""],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # a task's prints are forwarded at the Python level
            env=environ,
            cwd=env,
        )
    finally:
        theirs.close()
    executor = ExecutorProcess(proc, Pipe(ours), runs)
    try:
        executor.pipe.send([Verb.CONTEXT, argv, forwarded])
    except OSError:
        executor.kill()
        raise
    return executor

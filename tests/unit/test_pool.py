"""A template that does not answer a fork: the executors it was asked for get new sockets."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import cast

import pytest

from distrib.worker import _pool
from distrib.wire._pipe import Pipe
from distrib.wire._pipe_messages import Skip
from distrib.worker._pool import ExecutorProcess, Recipe, Template


def test_an_unanswered_fork_leaves_the_late_executor_a_closed_socket(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_pool, "FORK_TIMEOUT", 0.2)
    daemon_end, template_end = socket.socketpair()
    silent = subprocess.Popen(["sleep", "60"])  # (a template that never answers)
    try:
        template = Template(silent, Pipe(daemon_end), cast(Recipe, None), ready=True)
        ours, theirs = socket.socketpair()
        ex = ExecutorProcess(Pipe(ours), tmp_path, theirs)
        assert template.fork([ex]) == [ex]
        # The template got the socket and may still fork an executor holding it ...
        _, fds, _, _ = socket.recv_fds(template_end, 1, 1)
        late = socket.socket(fileno=fds[0])
        late.settimeout(30)
        # ... whose socket no longer leads anywhere: it reads the end and exits,
        assert late.recv(1) == b""
        # while the executor started instead gets a socket of its own.
        assert ex.theirs is not None and ex.theirs is not theirs
        ex.pipe.send(Skip(1))
        ex.theirs.settimeout(30)
        assert ex.theirs.recv(64)
        late.close()
        ex.kill()
    finally:
        silent.kill()
        silent.wait()
        template_end.close()
        daemon_end.close()

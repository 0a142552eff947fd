"""The owner's control socket (``worker._control``): who may command the daemon."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from distrib.worker._control import ControlSocket
from tests.helpers import wait_for

OWN = "it is one of this daemon's own processes (a task's, or an executor)"


def test_the_control_socket_refuses_the_daemon_and_the_processes_it_started(
        tmp_path: Path) -> None:
    control = ControlSocket(tmp_path)  # (this test's process plays the daemon)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(control.path))
            conn, command, peer = wait_for(control.accept, 10, "the connection")
            conn.close()
        assert (command, peer) == ("", (os.getpid(), "it is this daemon itself"))
        # A process it started (as a task is, or one a task started) is refused too.
        child = subprocess.Popen([sys.executable, "-c", (
            "import socket, time; s = socket.socket(socket.AF_UNIX); "
            f"s.connect({str(control.path)!r}); s.sendall(b'drain\\n'); print(flush=True); "
            "time.sleep(30)")], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "\n"
            conn, command, peer = wait_for(control.accept, 10, "the child's connection")
            conn.close()
            assert (command, peer) == ("", (child.pid, OWN))  # (its command is not read)
        finally:
            child.kill()
            child.communicate()
    finally:
        control.close()

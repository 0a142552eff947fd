"""The embedded local cluster: worker daemons started as subprocesses of this Main.

They are ordinary ``distrib worker`` processes speaking the same protocol as remote ones,
listening on ``ipc://`` sockets in a folder only this user can enter (loopback TCP would let
any local user connect). They exit with the Main, even if it is killed.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distrib._errors import ConnectionFailed

log = logging.getLogger("distrib")

START_TIMEOUT = 60.0


class LocalCluster:
    """One local daemon offering ``threads`` slots; ``addresses`` lists where it listens."""

    def __init__(self, threads: int, cache_dir: Path) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="distrib-local-"))  # mode 0700
        self._threads, self._cache_dir = threads, cache_dir
        self.restarts = 0
        self.abandoned: set[str] = set()  # addresses whose daemon kept dying
        self.addresses: list[str] = [f"ipc://{self._folder}/worker-0.sock"]
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            self.procs.append(self._start(self.addresses[0]))
        except BaseException:
            self.stop()
            raise

    def _start(self, address: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "distrib", "worker", "--listen", address,
             "--threads", str(self._threads), "--name", "local", "--cache-dir",
             str(self._cache_dir / "worker"), "--exit-with-parent", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            cwd=self._folder,
        )
        try:
            self._await_ready(proc)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return proc

    def dead(self) -> list[tuple[str, int | None]]:
        """(address, exit code) of daemons that have exited."""
        return [(a, p.returncode) for a, p in zip(self.addresses, self.procs)
                if a not in self.abandoned and p.poll() is not None]

    def restart(self, address: str) -> None:
        """Start a fresh daemon at ``address`` (its predecessor exited)."""
        i = self.addresses.index(address)
        self.restarts += 1
        self.procs[i] = self._start(address)

    def _await_ready(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=0.5):
                    line = proc.stdout.readline().decode(errors="replace")
                    if " ready on " in line:
                        proc.stdout.close()
                        return
                    if not line:
                        break
        code = proc.poll()
        raise ConnectionFailed(
            f"the local worker did not start (exit code {code}); run "
            "`python -m distrib worker --listen 127.0.0.1:0 -v` to see why"
        )

    def stop(self) -> None:
        """Stop the daemons (SIGTERM, then SIGKILL after a grace period) and clean up."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                log.warning("local worker %d did not stop; killing it", proc.pid)
                proc.kill()
                proc.wait(10)
        self.procs.clear()
        shutil.rmtree(self._folder, ignore_errors=True)

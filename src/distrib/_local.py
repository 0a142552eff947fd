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
from distrib._process import wait_exit

log = logging.getLogger("distrib")

START_TIMEOUT = 60.0
MAX_RESTARTS = 3  # a local worker that keeps dying is given up on


class LocalCluster:
    """One local daemon offering ``threads`` slots; ``addresses`` lists where it listens.

    The daemon starts at once; ``wait_ready`` waits until it listens (the Main meanwhile
    scans its workspace)."""

    def __init__(self, threads: int, cache_dir: Path) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="distrib-local-"))  # mode 0700
        self._threads, self._cache_dir = threads, cache_dir
        self.restarts = 0
        self.abandoned: set[str] = set()  # addresses whose daemon kept dying
        self.addresses: list[str] = [f"ipc://{self._folder}/worker-0.sock"]
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            self.procs.append(self._spawn(self.addresses[0]))
        except BaseException:
            self.stop()
            raise

    def wait_ready(self) -> None:
        """Wait until the daemon listens; stop it (and raise) if it does not start."""
        try:
            self._await_ready(self.procs[0])
        except BaseException:
            self.stop()
            raise

    def _start(self, address: str) -> subprocess.Popen[bytes]:
        proc = self._spawn(address)
        try:
            self._await_ready(proc)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return proc

    def _spawn(self, address: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-P", "-m", "distrib", "worker", "--listen", address,
             "--threads", str(self._threads), "--name", "local", "--cache-dir",
             str(self._cache_dir / "worker"), "--exit-with-parent", str(os.getpid()),
             "--nice", "0", "--no-sandbox"],  # (this user's own machine and work: no
            # sandbox between them)
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            cwd=self._folder,
        )

    @property
    def gave_up(self) -> bool:
        """Every local daemon kept dying and is not restarted any more."""
        return self.abandoned == set(self.addresses)

    def replace_dead(self) -> list[tuple[str, str, bool]]:
        """Start a fresh daemon for each that exited, up to ``MAX_RESTARTS`` in all.

        Returns (address, why it ended, whether a new daemon listens there) for each.
        """
        out = []
        for i, (address, proc) in enumerate(zip(self.addresses, self.procs)):
            if address in self.abandoned or proc.poll() is None:
                continue
            reason = f"exited (code {proc.returncode})"
            if self.restarts >= MAX_RESTARTS:
                log.error("the local worker %s again; not restarting it (%d restarts)",
                          reason, self.restarts)
                self.abandoned.add(address)
                out.append((address, reason, False))
                continue
            log.warning("the local worker %s; starting a new one", reason)
            self.restarts += 1
            try:
                self.procs[i] = self._start(address)
            except ConnectionFailed as exc:
                log.error("%s", exc)
                out.append((address, reason, False))
                continue
            out.append((address, reason, True))
        return out

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
                wait_exit(proc, 10)
            except subprocess.TimeoutExpired:
                log.warning("local worker %d did not stop; killing it", proc.pid)
                proc.kill()
                proc.wait(10)
        self.procs.clear()
        shutil.rmtree(self._folder, ignore_errors=True)


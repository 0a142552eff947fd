"""The embedded local cluster: worker daemons started as subprocesses of this Main.

They are ordinary ``distrib worker`` processes speaking the same protocol as remote ones,
listening on ``ipc://`` sockets in a folder only this user can enter (loopback TCP would let
any local user connect). They exit with the Main, even if it is killed; with ``linger``, the
daemon instead outlives it, for this user's next script to attach to (``_linger``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distrib._errors import ConnectionFailed
from distrib._linger import Place, running
from distrib._process import readable, wait_exit
from distrib._scratch import private_prefix

log = logging.getLogger("distrib")

START_TIMEOUT = 60.0
MAX_RESTARTS = 3  # a local worker that keeps dying is given up on
_disowned: list[subprocess.Popen[bytes]] = []  # lingering daemons this process started: kept
# (not collected) while it runs, as they outlive it


class _Lingering:
    """A lingering daemon, ours or another Main's: what ``LocalCluster`` asks of a Popen."""

    def __init__(self, pid: int, folder: Path, popen: subprocess.Popen[bytes] | None) -> None:
        self.pid, self._folder, self._popen = pid, folder, popen
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self._popen is not None:  # (ours: reaped, with its exit code)
            self.returncode = self._popen.poll()
        elif self.returncode is None and running(self._folder) != self.pid:
            self.returncode = -1  # (another's: its code is not known here)
        return self.returncode


class LocalCluster:
    """One local daemon offering ``threads`` slots; ``addresses`` lists where it listens.

    The daemon starts at once; ``wait_ready`` waits until it listens (the Main meanwhile
    scans its workspace)."""

    def __init__(self, threads: int, cache_dir: Path, linger: float = 0.0) -> None:
        self._threads, self._cache_dir, self._linger = threads, cache_dir, linger
        self.place = Place(threads, cache_dir) if linger else None
        self._folder = self.place.folder if self.place is not None \
            else Path(tempfile.mkdtemp(prefix=private_prefix("local")))  # mode 0700
        self.restarts = 0
        self.abandoned: set[str] = set()  # addresses whose daemon kept dying
        self.addresses: list[str] = [self.place.address if self.place is not None
                                     else f"ipc://{self._folder}/worker-0.sock"]
        self.procs: list[subprocess.Popen[bytes] | _Lingering] = []
        try:
            self.procs.append(self._begin(self.addresses[0]))
        except BaseException:
            self.stop()
            raise

    @property
    def store(self) -> Path:
        """Where the daemon keeps its store (see ``main._prefill``)."""
        return self._cache_dir / "worker"

    def starting(self) -> bool:
        """Whether the daemon this Main started has yet to say it listens (without waiting)."""
        proc = self.procs[0] if self.procs else None
        if not isinstance(proc, subprocess.Popen) or proc.stdout is None \
                or proc.stdout.closed or proc.poll() is not None:
            return False
        return not readable(proc.stdout.fileno(), 0)

    def wait_ready(self) -> None:
        """Wait until the daemon listens; stop it (and raise) if it does not start."""
        try:
            self.procs[0] = self._ready(self.procs[0])
        except BaseException:
            self.stop()
            raise

    def _start(self, address: str) -> subprocess.Popen[bytes] | _Lingering:
        proc = self._begin(address)
        try:
            return self._ready(proc)
        except BaseException:
            if isinstance(proc, subprocess.Popen):
                proc.kill()
                proc.wait()
            if self.place is not None:  # (the next try, or another Main, starts one)
                self.place.release_start()
            raise

    def _begin(self, address: str) -> subprocess.Popen[bytes] | _Lingering:
        """A lingering daemon to attach to, or a daemon starting."""
        if self.place is not None:
            pid = self.place.attach()
            if pid is not None:
                log.info("attached to the local cluster's lingering daemon (pid %d)", pid)
                return _Lingering(pid, self._folder, None)
        return self._spawn(address)

    def _ready(self, proc: subprocess.Popen[bytes] | _Lingering
               ) -> subprocess.Popen[bytes] | _Lingering:
        """Wait until ``proc`` listens; a lingering one is recorded for the next Mains."""
        if isinstance(proc, _Lingering):
            return proc
        self._await_ready(proc)
        if self.place is None:
            return proc
        self.place.started(proc.pid)
        self.place.release_start()
        _disowned.append(proc)
        return _Lingering(proc.pid, self._folder, proc)

    def _spawn(self, address: str) -> subprocess.Popen[bytes]:
        lasting = ["--exit-with-parent", str(os.getpid())] if self.place is None else [
            "--linger", str(self._linger), "--users-lock", str(self.place.users)]
        log_file = None if self.place is None else open(self.place.log, "wb")
        try:
            return subprocess.Popen(
                [sys.executable, "-P", "-m", "distrib", "worker", "--listen", address,
                 "--threads", str(self._threads), "--name", "local", "--cache-dir",
                 str(self.store), *lasting,
                 "--nice", "0", "--no-sandbox"],  # (this user's own machine and work: no
                # sandbox between them)
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,  # (lingering, it outlives this terminal: its own log)
                cwd=self._folder,
                start_new_session=self.place is not None,  # (nor does Ctrl-C here stop it)
            )
        finally:
            if log_file is not None:
                log_file.close()

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
        while time.monotonic() < deadline:
            if readable(proc.stdout.fileno(), 0.5):
                line = proc.stdout.readline().decode(errors="replace")
                if " ready on " in line:
                    proc.stdout.close()
                    return
                if not line:
                    break
        code = proc.poll()
        logged = f" (its log: {self.place.log})" if self.place is not None else ""
        raise ConnectionFailed(
            f"the local worker did not start (exit code {code}){logged}; run "
            "`python -m distrib worker --listen 127.0.0.1:0 -v` to see why"
        )

    def stop(self) -> None:
        """Stop the daemons (SIGTERM, then SIGKILL after a grace period) and clean up; a
        lingering one is left to linger (this Main no longer counts as its user)."""
        ours = [p for p in self.procs if isinstance(p, subprocess.Popen)]  # (lingering: not)
        for proc in ours:
            if proc.poll() is None:
                proc.terminate()
        for proc in ours:
            try:
                wait_exit(proc, 10)
            except subprocess.TimeoutExpired:
                log.warning("local worker %d did not stop; killing it", proc.pid)
                proc.kill()
                proc.wait(10)
        self.procs.clear()
        if self.place is not None:
            self.place.leave()
        else:
            shutil.rmtree(self._folder, ignore_errors=True)

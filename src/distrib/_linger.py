"""The local cluster's lingering daemon: its private place, its locks, and finding it again.

With ``linger`` set, the embedded cluster's daemon outlives its script and the next script of
the same user attaches to it. It lives in a folder of its own, one per interpreter, Python and
distrib version, slot count and cache (a daemon started for other ones would not serve this
script as its own):

    $XDG_RUNTIME_DIR/distrib/local-<key>/   (or $TMPDIR/distrib-<uid>/...) mode 0700, checked
        worker.sock   where it listens (ipc://): only this user can enter the folder
        start.lock    held by a Main while it looks for the daemon and, if none, starts one:
                      two scripts started at once start one daemon
        users.lock    held shared by every Main using the daemon, for its whole life (the
                      system lets go of it when a Main dies, even by SIGKILL); the daemon
                      leaves only once it takes it exclusively: no Main uses it, none attaches
        daemon.pid    "<pid> <start time>" of the daemon a Main started; a daemon that is gone
                      (killed) or another process with its pid is stale, and is replaced
        daemon.log    what the daemon logs (it outlives the terminal it was started from)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import sys
import tempfile
import time
from pathlib import Path

from distrib import _process
from distrib._errors import ConfigError, ConnectionFailed

LOCK_WAIT = 60.0  # seconds a Main waits for another starting the daemon (or one leaving)
_PREFIX = "local-"


def root() -> Path:
    """This user's private folder of lingering daemons (made, and checked, here)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime) and os.stat(runtime).st_uid == os.geteuid():
        where = Path(runtime) / "distrib"  # (another user's, kept by sudo, say: not used)
    else:  # (as tmux does: a folder per user in the shared temporary folder, checked)
        where = Path(tempfile.gettempdir()) / f"distrib-{os.geteuid()}"
    return private(where)


def private(where: Path) -> Path:
    """``where``, made if missing, checked to be a folder of this user's alone (mode 0700):
    one another user made or can enter is never used."""
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(where)
    except OSError as exc:
        raise ConfigError(f"cannot make the folder {where} for the local cluster's lingering "
                          f"daemon: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() \
            or info.st_mode & 0o077:
        raise ConfigError(
            f"{where} is not a private folder of this user (owner uid {info.st_uid}, mode "
            f"{stat.filemode(info.st_mode)}): another user may have made it. Remove it, set "
            "XDG_RUNTIME_DIR to a folder of your own, or turn linger off")
    return where


def key(threads: int, cache_dir: Path) -> str:
    """Which lingering daemon serves this Main: the same interpreter, Python, distrib, slot
    count and cache."""
    version = sys.modules["distrib"].__version__  # (the package, imported before any module
    # of it: not imported again here, which would make this layer depend on the API's)
    text = "\0".join((sys.executable, sys.version, version, str(threads),
                      str(cache_dir.absolute())))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _lock(path: Path, kind: int) -> int:
    """An open descriptor of ``path`` holding the lock ``kind`` (waiting up to LOCK_WAIT)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise ConnectionFailed(
                    f"{path} stayed locked for {LOCK_WAIT:.0f} s: another script is starting "
                    "the local cluster's lingering daemon, or one is stuck leaving; stop it "
                    "with `distrib worker stop`") from None
            time.sleep(0.01)


class Place:
    """The folder of the lingering daemon that serves this Main, and this Main's hold on it.

    ``attach()`` takes this Main's share of the daemon (``users.lock``) and the start lock, and
    says whether a live daemon is there; ``started(pid)`` records one this Main started, and
    ``release_start()`` lets other Mains look. ``leave()`` lets go of the share."""

    def __init__(self, threads: int, cache_dir: Path) -> None:
        self.folder = private(root() / f"{_PREFIX}{key(threads, cache_dir)}")
        self.address = f"ipc://{self.folder}/worker.sock"
        self.log = self.folder / "daemon.log"
        self.users = self.folder / "users.lock"
        self._start: int | None = None
        self._share: int | None = None

    def attach(self) -> int | None:
        """The pid of the live daemon here (this Main now counts as its user), or None: then
        this Main holds the start lock, the stale files are gone, and it starts one."""
        self._start = _lock(self.folder / "start.lock", fcntl.LOCK_EX)
        try:
            if self._share is None:  # (a daemon leaving holds it: wait until it is gone)
                self._share = _lock(self.users, fcntl.LOCK_SH)
            pid = running(self.folder)
            if pid is not None:
                self.release_start()
                return pid
            for stale in ("worker.sock", "daemon.pid"):  # (never trusted: replaced)
                (self.folder / stale).unlink(missing_ok=True)
            return None
        except BaseException:
            self.release_start()
            raise

    def started(self, pid: int) -> None:
        """Record the daemon this Main started (it listens now)."""
        at = _process.started_at(pid)
        record = self.folder / "daemon.pid"
        record.with_suffix(".new").write_text(f"{pid} {at!r}\n")
        record.with_suffix(".new").replace(record)

    def release_start(self) -> None:
        if self._start is not None:
            os.close(self._start)  # (closing lets go of the lock)
            self._start = None

    def leave(self) -> None:
        """This Main no longer uses the daemon (it lingers, then leaves on its own)."""
        self.release_start()
        if self._share is not None:
            os.close(self._share)
            self._share = None


def running(folder: Path) -> int | None:
    """The pid of the live daemon ``folder`` records, or None (none, or a stale record)."""
    try:
        pid_text, at_text = (folder / "daemon.pid").read_text().split()
        pid, at = int(pid_text), float(at_text)
    except (OSError, ValueError):
        return None
    now_at = _process.started_at(pid)
    if now_at is None or abs(now_at - at) > 0.01 or not (folder / "worker.sock").exists():
        return None  # (gone, or its pid is another process's now)
    return pid


def lingering() -> list[tuple[str, int]]:
    """This user's lingering daemons alive now: (address, pid)."""
    try:
        where = root()
    except ConfigError:
        return []
    out = []
    for folder in sorted(where.glob(f"{_PREFIX}*")):
        pid = running(folder)
        if pid is not None:
            out.append((f"ipc://{folder}/worker.sock", pid))
    return out


def users_gone(lock: Path) -> int | None:
    """(In the daemon) A descriptor holding ``lock`` exclusively if no Main uses the daemon
    nor is attaching to it (kept open until the daemon is gone), else None."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd

"""Scratch folders of a worker's tasks: removing them, even an overlay's work folder (at once,
or out of the way first and then in a thread of its own), and the task folders that daemons
killed before their end left behind; and the private temporary folders of a process (a local
cluster's socket, a launch's keys), those of processes killed before their end removed (a
relay's are not named so: its socket's path, under a test's TMPDIR, passed the 107 characters
a Unix socket's path may have)."""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import stat
import tempfile
import threading
from pathlib import Path

from distrib._process import exists


def remove_tree(path: Path) -> None:
    """Remove a scratch tree, including an overlay's work folder (which has mode 000)."""
    for folder, dirs, _ in os.walk(path):  # top down: each folder is opened before its walk
        for name in dirs:
            try:
                os.chmod(os.path.join(folder, name), stat.S_IRWXU)
            except OSError:  # (removed meanwhile: by the thread of remove_later, say)
                pass
    shutil.rmtree(path, ignore_errors=True)


_doomed: queue.SimpleQueue[Path] = queue.SimpleQueue()
_names = itertools.count()  # (a pid used again must not meet its predecessor's folder)
_remover: threading.Thread | None = None
_remover_lock = threading.Lock()


def remove_later(path: Path) -> None:
    """Move a scratch tree out of the way now (one rename) and remove it in a thread: a task
    may have left a great many files (removing 200,000 took the daemon's loop 13 s here)."""
    global _remover
    gone = path.with_name(f".gone-{next(_names)}-{path.name}")
    try:
        os.rename(path, gone)
    except OSError:  # (gone already, say)
        return
    _doomed.put(gone)
    with _remover_lock:
        if _remover is None:
            _remover = threading.Thread(target=_remove_doomed, name="distrib-remove",
                                        daemon=True)
            _remover.start()


def _remove_doomed() -> None:
    while True:
        remove_tree(_doomed.get())


def remove_dead_runs(runs: Path) -> None:
    """Remove the task folders of daemons that are gone (killed before they could)."""
    for folder in runs.glob("*-*") if runs.is_dir() else []:
        pid = folder.name.split("-", 1)[0]
        if pid.isdigit() and not exists(int(pid)):
            remove_tree(folder)


def private_prefix(kind: str) -> str:
    """The name prefix of this process's temporary folder of ``kind`` (for ``mkdtemp`` or
    ``TemporaryDirectory``, which make it owner-only); first removes this user's folders of
    that kind whose process is gone (killed with -9, say: a launch's left its key there)."""
    base = Path(tempfile.gettempdir())
    uid = os.getuid()
    for folder in base.glob(f"distrib-{kind}-*-*"):
        pid = folder.name.split("-")[2]
        try:
            if pid.isdigit() and not exists(int(pid)) and folder.lstat().st_uid == uid:
                remove_tree(folder)
        except OSError:  # (removed meanwhile by another)
            pass
    return f"distrib-{kind}-{os.getpid()}-"

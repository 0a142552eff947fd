"""The Pythons a worker can build environments with: found on this machine (pyenv's, the
PATH's, the owner's extra ones), each asked its version once."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from distrib.wire._facts import python_version

log = logging.getLogger("distrib.worker")

MIN_PYTHON = (3, 11)  # what distrib's executor code needs
probes: set[int] = set()  # the Pythons being asked their version now (this daemon's own)


def find_interpreters(extra: Iterable[Path] = ()) -> dict[str, Path]:
    """Installed CPython interpreters by ``major.minor``: this daemon's own, ``extra`` ones,
    pyenv's, and ``python3.N`` on the PATH (none is ever downloaded)."""
    found: dict[str, Path] = {python_version(): Path(sys.executable)}
    for path in extra:
        version = _version_of(path)
        if version is None:
            log.warning("--python %s: not a CPython 3.11 or newer interpreter; ignored", path)
        else:
            found.setdefault(version, path)
    named: list[tuple[str, Path]] = []  # (version, path) as pyenv's folders and PATH name them
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    if root.is_dir():
        named += [(p.parent.parent.name, p) for p in sorted(root.glob("3.*/bin/python3"))]
    for minor in range(MIN_PYTHON[1], 30):
        on_path = shutil.which(f"python3.{minor}")
        if on_path and "shims" not in Path(on_path).parts:  # (pyenv's shims run one only)
            named.append((f"3.{minor}", Path(on_path)))
    for full, path in named:
        parts = full.split(".")
        if len(parts) >= 2 and parts[0] == "3" and parts[1].isdigit() and \
                (3, int(parts[1])) >= MIN_PYTHON and os.access(path, os.X_OK):
            found.setdefault(f"3.{parts[1]}", path)
    return dict(sorted(found.items(), key=lambda kv: tuple(map(int, kv[0].split(".")))))


def _version_of(path: Path) -> str | None:
    try:
        proc = subprocess.Popen([str(path), "-c", "import sys; print(sys.version_info[0], "
                                 "sys.version_info[1], sys.implementation.name)"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, text=True)
    except OSError:
        return None
    probes.add(proc.pid)  # (not a process a task left: see ``worker/_strays.py``)
    try:
        output, _ = proc.communicate(timeout=30)
        major, minor, impl = output.split()
    except (ValueError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
        return None
    finally:
        probes.discard(proc.pid)
    if impl != "cpython" or (int(major), int(minor)) < MIN_PYTHON:
        return None
    return f"{major}.{minor}"

"""Whether an environment tree still holds what it was built from, proved by content.

Size and modification time prove nothing: anything running as the worker's user can rewrite a
file in place and set its times back. So a daemon hashes every file of a tree the first time
it uses it (the manifest names each file's hash; the compiled modules are compiled again), and
keeps in memory, per file, the hash it must have and its *signature*: inode, size, modification
time and change time. The change time is the kernel's, set on every write, and only root can
set it back; so later checks stat the files and hash only those whose signature moved (a link
made to the same blob by another tree moves it too: that file is hashed and found right).

Nothing of this is kept on disk: a record there could be rewritten along with the tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import py_compile
import stat
import sys
from pathlib import Path

from msgspec import Struct

from distrib.workspace._manifest import Entry

Signature = tuple[int, int, int, int]  # inode, size, modification and change time (ns)
_CACHE_TAG = f".{sys.implementation.cache_tag}.pyc"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CHUNK = 1 << 20


def signature(st: os.stat_result) -> Signature:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def file_hash(path: Path | str) -> str | None:
    """The sha256 of a regular file (not followed through a link), or None if it is not
    one or cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        digest = hashlib.sha256()
        # (read in large pieces into one hash: hashlib.file_digest's 256 KiB buffer, made
        # anew per file, cost more than hashing a small module)
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


class Record(Struct):
    """A tree as this daemon last found it whole: per file (relative path), the hash it must
    have and its signature then."""

    truth: dict[str, str]
    seen: dict[str, Signature]


def files(root: Path) -> dict[str, os.stat_result]:
    """Every entry under ``root`` that is not a folder (links included), by relative path
    ("/" between folders)."""
    out = {}
    folders = [("", str(root))]
    while folders:
        prefix, folder = folders.pop()
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    rel = prefix + entry.name
                    if entry.is_dir(follow_symlinks=False):
                        folders.append((rel + "/", entry.path))
                    else:
                        out[rel] = entry.stat(follow_symlinks=False)
        except OSError:  # (gone meanwhile: its files are missing, below)
            continue
    return out


def record(root: Path, entries: list[Entry]) -> Record:
    """The record of a tree just built from verified blobs: the manifest's hashes, and the
    compiled modules' own."""
    truth = {e.path: e.digest for e in entries}
    now = files(root)
    for path in now.keys() - truth.keys():
        truth[path] = file_hash(root / path) or ""
    return Record(truth, {p: signature(st) for p, st in now.items()})


def check(root: Path, rec: Record) -> list[str]:
    """Files of the tree that differ from ``rec`` (changed, missing or added): stat all, hash
    those whose signature moved. The record follows the files found still right."""
    now = files(root)
    drifted = sorted(now.keys() ^ rec.truth.keys())
    for path in now.keys() & rec.truth.keys():
        seen = signature(now[path])
        if seen != rec.seen.get(path):
            if file_hash(root / path) == rec.truth[path]:
                rec.seen[path] = seen  # (the signature taken before hashing: a later write
                # moves it again)
            else:
                drifted.append(path)
    return sorted(drifted)


def first_check(root: Path, entries: list[Entry]) -> tuple[list[str], Record | None]:
    """Check a tree this daemon has not checked before, every file by its hash: the files that
    differ (changed, missing or added), and the tree's record when none does. Its compiled
    modules cannot be proved by a hash the manifest gives: they are compiled again from their
    (checked) sources; one of another interpreter, or of no source, is removed."""
    truth = {e.path: e.digest for e in entries}
    now = files(root)
    seen = {p: signature(st) for p, st in now.items()}
    drifted = sorted(truth.keys() - now.keys())
    compiled = []
    for path in now:
        if path in truth:
            if file_hash(root / path) != truth[path]:
                drifted.append(path)
        elif _is_compiled(path):
            compiled.append(path)
        else:
            drifted.append(path)
    if drifted:
        return sorted(drifted), None
    rec = Record(truth, seen)  # (the signatures taken before hashing)
    for path in compiled:
        source = _source_of(path)
        (root / path).unlink(missing_ok=True)
        del seen[path]
        if source in truth and path.endswith(_CACHE_TAG):
            compile_module(root, source)
            with contextlib.suppress(OSError):
                seen[path] = signature(os.lstat(root / path))
                truth[path] = file_hash(root / path) or ""
    return [], rec


def compile_module(root: Path, path: str, final: Path | None = None) -> None:
    """Compile the module ``path`` of the tree ``root`` (to be renamed ``final``) next to
    it, as imports would (checked by its source's time and size)."""
    import compileall  # (here: a daemon's start needs none of it)

    compileall.compile_file(root / path, ddir=str(((final or root) / path).parent), quiet=2,
                            invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)


def _is_compiled(path: str) -> bool:
    parts = path.split("/")
    return len(parts) >= 2 and parts[-2] == "__pycache__" and parts[-1].endswith(".pyc")


def _source_of(path: str) -> str:
    """``a/__pycache__/b.cpython-311.pyc`` -> ``a/b.py``."""
    folder, _, name = path.rpartition("/")
    parent = folder.removesuffix("__pycache__").rstrip("/")
    module = name.split(".")[0] + ".py"
    return f"{parent}/{module}" if parent else module

"""Large payload frames through shared memory, between a Main and a worker on one machine.

A frame of ``MIN`` bytes or more of a call or a result is written once into a file of
``/dev/shm`` and the message carries the file's name instead (``TaskSpec.shm`` and
``ResultSpec.shm``: name -> the frame's index in the payload; the frame itself is empty). The
side that reads it maps the file: a numpy array argument or result is then one copy away from
the process that made it, instead of passing through the sockets of a Main, a daemon and an
executor.

Only where both sides see the same ``/dev/shm`` as the same user: the Main writes a *probe*
file (mode 0600, a random token inside) and names it in its Hello; the worker answers
``Welcome.shm`` true only if it reads that token from a file its own user owns. Files are
named ``distrib-<Main pid>-<random>``: the Main removes the files of a call when the call is
done (or at exit), and removes result files as it maps them; a worker removes a Main's files
when that Main leaves (killed, say), and a Main starting removes those of Mains that are gone.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distrib._process import exists
from distrib.wire._kinds import SHM_NAME as NAME

ROOT = Path("/dev/shm")
MIN = 1 << 20  # bytes: smaller frames travel in the message
# A file of frames (a shared object, on a worker's disk or here): their count, each one's
# size, then the frames
OBJECT_COUNT = struct.Struct("<I")


def object_header(views: Sequence[memoryview]) -> bytes:
    """The header of a file holding the frames ``views``."""
    return OBJECT_COUNT.pack(len(views)) + struct.pack(f"<{len(views)}Q",
                                                       *(v.nbytes for v in views))


def read_object_header(head: bytes | memoryview) -> tuple[int, tuple[int, ...]]:
    """(bytes of the header, each frame's size) of a file holding an object's frames, from
    its first bytes; ``ValueError`` if they are no header."""
    if len(head) < OBJECT_COUNT.size:
        raise ValueError("no header")
    (count,) = OBJECT_COUNT.unpack_from(head)
    if len(head) < OBJECT_COUNT.size + 8 * count:
        raise ValueError(f"a header of {count} frames is cut short")
    return OBJECT_COUNT.size + 8 * count, struct.unpack_from(f"<{count}Q", head,
                                                             OBJECT_COUNT.size)


def offload_object(frames: Sequence[Any], pid: int) -> str:
    """Write a shared object's frames into a new file of ``pid``'s: its name. A worker on
    this machine links the file instead of receiving the bytes."""
    views = [memoryview(f).cast("B") for f in frames]
    return _new_file(pid, [memoryview(object_header(views)), *views])


def available() -> bool:
    """Whether this machine has a ``/dev/shm`` to share frames through."""
    return ROOT.is_dir() and os.access(ROOT, os.W_OK)


def probe(pid: int) -> tuple[Path, str] | None:
    """Write this Main's probe file; (its path, its token), or None without ``/dev/shm``."""
    if not available():
        return None
    token = os.urandom(16).hex()  # (secrets.token_hex, without importing secrets)
    path = ROOT / f"distrib-{pid}-probe"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
    except OSError:
        return None
    return path, token


def check_probe(name: str, token: str, pid: int) -> bool:
    """On a worker: whether a Main's probe shows that it shares ``/dev/shm`` and this user.
    Only the probe's own name is opened (no link followed, no more than a token read)."""
    if name != f"distrib-{pid}-probe" or not 0 < len(token) <= 64:
        return False
    try:
        fd = os.open(ROOT / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return False
        return os.read(fd, 65) == token.encode()
    except OSError:
        return False
    finally:
        os.close(fd)


def worth(frames: Sequence[Any]) -> bool:
    """Whether a payload has a frame for /dev/shm (at once for the usual one small frame)."""
    return (len(frames) > 1 or memoryview(frames[0]).nbytes >= MIN) and any(
        memoryview(f).nbytes >= MIN for f in frames)


def map_private(path: Path) -> memoryview:
    """The file at ``path``, mapped copy-on-write: read without a copy, and writable, the
    writes staying this process's own."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return memoryview(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) if size
                          else b"")


def offload(frames: list[Any], pid: int) -> tuple[list[Any], dict[str, int]]:
    """Write the large frames of a payload into files of ``pid``'s: (the payload with those
    frames empty, name -> index)."""
    names: dict[str, int] = {}
    out = list(frames)
    try:
        for i, frame in enumerate(frames):
            view = memoryview(frame).cast("B")
            if view.nbytes >= MIN:
                names[_new_file(pid, [view])] = i
                out[i] = b""
    except OSError:  # (/dev/shm full, say): none of them, then
        remove(list(names))
        raise
    return out, names


def _new_file(pid: int, views: Sequence[memoryview]) -> str:
    """Write ``views`` one after the other into a new file of ``pid``'s: its name."""
    name = f"distrib-{pid}-{os.urandom(8).hex()}"
    path = ROOT / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for view in views:
            done = 0
            while done < view.nbytes:
                done += os.write(fd, view[done:])
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return name


def restore(frames: Sequence[Any], names: dict[str, int], unlink: bool) -> list[Any]:
    """The payload with each named frame mapped from its file (writable, private to this
    process); ``unlink``: remove the files (the mappings stay)."""
    out = list(frames)
    for name, index in names.items():
        if not NAME.fullmatch(name) or not 0 <= index < len(out):
            raise ValueError(f"bad shared-memory frame {name!r} at {index}")
        path = ROOT / name
        out[index] = map_private(path)
        if unlink:
            path.unlink(missing_ok=True)
    return out


class Owned:
    """Files a call's frames were written to: removed when this is collected (its call is
    done and forgotten)."""

    __slots__ = ("names",)

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __del__(self) -> None:
        remove(self.names)


def remove(names: Sequence[str]) -> None:
    """Remove these files (the frames of a call that is done)."""
    for name in names:
        if NAME.fullmatch(name):
            _unlink(ROOT / name)


def remove_of(pid: int) -> None:
    """Remove every file of the Main ``pid`` that this user owns (it left)."""
    if ROOT.is_dir():
        for path in ROOT.glob(f"distrib-{pid}-*"):
            _unlink(path, mine=True)


def remove_stale() -> None:
    """Remove this user's files of Mains that are gone (killed before they could)."""
    if not ROOT.is_dir():
        return
    for path in ROOT.glob("distrib-*-*"):
        match = NAME.fullmatch(path.name)
        if match is not None and not exists(int(match.group(1))):
            _unlink(path, mine=True)


def _unlink(path: Path, mine: bool = False) -> None:
    """Remove ``path`` if it is there (and, with ``mine``, owned by this user); another
    user's file, or one that went meanwhile, is left alone."""
    try:
        if mine and path.lstat().st_uid != os.geteuid():
            return
        path.unlink()
    except OSError:
        pass

"""The worker's content-addressed store: verified blobs and the environments built from them.

Layout under the worker's cache folder::

    blobs/ab/abcdef...      one file per content hash, written atomically after verification
    envs/<dist id>/         a distribution materialised as a tree (copied from blobs)

Several daemons may share one store: every write goes to a temporary name and is renamed into
place, so a reader sees a whole file or tree or nothing.
"""

from __future__ import annotations

import compileall
import hashlib
import logging
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import msgpack

from distrib._errors import WorkspaceError
from distrib.wire._limits import MAX_FILE_BYTES
from distrib.workspace._manifest import Entry

log = logging.getLogger("distrib.store")


def _touch(path: Path) -> None:
    # The modification time records the last use; eviction goes by it.
    now = time.time_ns()
    os.utime(path, ns=(now, now))


class Store:
    """Blobs and environments under ``root``; ``max_envs`` bounds how many trees are kept."""

    def __init__(self, root: Path, max_envs: int = 16) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.envs = root / "envs"
        self.stamps = root / "stamps"  # per environment: each file's size and mtime as built
        self.max_envs = max_envs
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.envs.mkdir(parents=True, exist_ok=True)
        self.stamps.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)

    def clean_leftovers(self, age: float = 3600.0) -> None:
        """Remove temporaries older than ``age`` seconds (a daemon died mid-write; younger ones
        may be another daemon's, sharing this store, at work)."""
        old = time.time() - age
        for path in [*self.envs.glob(".tmp-*"), *self.envs.glob(".trash-*"),
                     *self.blobs.glob("*/.tmp-*"), *self.stamps.glob(".tmp-*")]:
            try:
                if path.lstat().st_mtime < old:
                    remove = shutil.rmtree if path.is_dir() else os.unlink
                    remove(path)
            except OSError:
                pass

    def _blob_path(self, digest: str) -> Path:
        return self.blobs / digest[:2] / digest

    def missing(self, entries: list[Entry]) -> list[str]:
        """Digests of ``entries`` not yet in the store, each once."""
        out: dict[str, None] = {}
        for e in entries:
            if not self._blob_path(e.digest).exists():
                out[e.digest] = None
        return list(out)

    def put_compressed(self, digest: str, data: bytes | memoryview,
                       size: int | None = None) -> None:
        """Decompress, verify against ``digest`` and its declared ``size`` and store one blob;
        ``WorkspaceError`` if bad (it never takes more than ``size`` bytes of memory or disk:
        2.6 MB of zeros once became 5 GB on a worker)."""
        limit = MAX_FILE_BYTES if size is None else min(size, MAX_FILE_BYTES)
        try:
            d = zlib.decompressobj()
            raw = d.decompress(data, limit + 1)
        except zlib.error as exc:
            raise WorkspaceError(f"blob {digest[:12]} is not valid zlib data: {exc}") from None
        if len(raw) > limit or d.unconsumed_tail:
            raise WorkspaceError(f"blob {digest[:12]} is larger than the {limit} bytes "
                                 "allowed (its declared size); discarded")
        if size is not None and len(raw) != size:
            raise WorkspaceError(f"blob {digest[:12]} is {len(raw)} bytes, not the {size} its "
                                 "manifest declares; discarded")
        if hashlib.sha256(raw).hexdigest() != digest:
            raise WorkspaceError(f"blob {digest[:12]} does not match its hash; discarded")
        path = self._blob_path(digest)
        path.parent.mkdir(exist_ok=True)
        _write_atomically(path, raw)

    def env_path(self, dist_id: str) -> Path:
        return self.envs / dist_id

    def drift(self, dist_id: str) -> list[str]:
        """Files of the environment tree that differ from when it was built (changed, missing
        or added), by size and modification time; empty when it is as built."""
        try:
            built = msgpack.unpackb(self._stamp_file(dist_id, self.env_path(dist_id)).read_bytes())
        except (OSError, ValueError):
            return ["(no record of how it was built)"]
        now = _stamp(self.env_path(dist_id))
        return sorted(path for path in built.keys() | now.keys()
                      if built.get(path) != now.get(path))

    def discard(self, dist_id: str) -> None:
        """Remove an environment tree (moved aside first, so no one sees half of it)."""
        final = self.env_path(dist_id)
        trash = Path(tempfile.mkdtemp(dir=self.envs, prefix=".trash-"))
        try:
            os.rename(final, trash / "tree")
        except OSError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
        for stamp in self.stamps.glob(f"{dist_id}-*"):
            stamp.unlink(missing_ok=True)

    def _stamp_file(self, dist_id: str, tree: Path) -> Path:
        # Named by the tree's inode, which a rename keeps: written before the tree appears
        # under its final name, and two daemons building it at once each name their own.
        return self.stamps / f"{dist_id}-{os.stat(tree).st_ino}"

    def materialize(self, dist_id: str, entries: list[Entry], in_use: set[str]) -> Path:
        """Build the environment tree for ``dist_id`` from stored blobs; return its path.

        An existing tree is checked first: one that drifted from how it was built (a file
        changed by hand, say) is logged with the file names and built again."""
        final = self.env_path(dist_id)
        if final.is_dir():
            drifted = self.drift(dist_id)
            if not drifted:
                _touch(final)
                return final
            log.warning("environment %s drifted from its manifest (%s); building it again from "
                        "the blob store", dist_id[:12], _names(drifted))
            self.discard(dist_id)
        tmp = Path(tempfile.mkdtemp(dir=self.envs, prefix=".tmp-"))
        try:
            for e in entries:
                src = self._blob_path(e.digest)
                dst = tmp / e.path
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                os.chmod(dst, 0o755 if e.executable else 0o644)
            # Compiled now, once: executors only read the tree (task writes go elsewhere).
            compileall.compile_dir(tmp, ddir=str(final), quiet=2, workers=1)
            stamp = self._stamp_file(dist_id, tmp)
            _write_atomically(stamp, msgpack.packb(_stamp(tmp)))
            try:
                os.rename(tmp, final)
            except OSError:  # another daemon sharing the store built it first
                shutil.rmtree(tmp, ignore_errors=True)
                stamp.unlink(missing_ok=True)
            _touch(final)
        except FileNotFoundError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise WorkspaceError(f"blob missing while building {dist_id[:12]}: {exc}") from None
        self.evict(keep=in_use | {dist_id})
        return final

    def evict(self, keep: set[str]) -> None:
        """Remove the least recently used environments beyond ``max_envs`` (not in ``keep``)."""
        envs = [p for p in self.envs.iterdir() if not p.name.startswith(".")]
        if len(envs) <= self.max_envs:
            return
        envs.sort(key=lambda p: p.stat().st_mtime_ns)
        for p in envs[: len(envs) - self.max_envs]:
            if p.name not in keep:
                log.info("evicting environment %s", p.name[:12])
                self.discard(p.name)
        # Stale temporaries from a daemon that died mid-build.
        for p in [*self.envs.glob(".tmp-*"), *self.envs.glob(".trash-*")]:
            if p.stat().st_mtime < time.time() - 3600:
                shutil.rmtree(p, ignore_errors=True)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _stamp(root: Path) -> dict[str, list[int]]:
    """Size and modification time of every file under ``root``, by relative path."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = [st.st_size, st.st_mtime_ns]
    return out


def _names(paths: list[str], most: int = 10) -> str:
    more = f" and {len(paths) - most} more" if len(paths) > most else ""
    return ", ".join(paths[:most]) + more

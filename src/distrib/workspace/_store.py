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
        self.max_envs = max_envs
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.envs.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)

    def _blob_path(self, digest: str) -> Path:
        return self.blobs / digest[:2] / digest

    def missing(self, entries: list[Entry]) -> list[str]:
        """Digests of ``entries`` not yet in the store, each once."""
        out: dict[str, None] = {}
        for e in entries:
            if not self._blob_path(e.digest).exists():
                out[e.digest] = None
        return list(out)

    def put_compressed(self, digest: str, data: bytes | memoryview) -> None:
        """Decompress, verify against ``digest`` and store one blob; ``WorkspaceError`` if bad."""
        try:
            d = zlib.decompressobj()
            raw = d.decompress(data, MAX_FILE_BYTES + 1)
        except zlib.error as exc:
            raise WorkspaceError(f"blob {digest[:12]} is not valid zlib data: {exc}") from None
        if len(raw) > MAX_FILE_BYTES or d.unconsumed_tail:
            raise WorkspaceError(f"blob {digest[:12]} exceeds {MAX_FILE_BYTES} bytes")
        if hashlib.sha256(raw).hexdigest() != digest:
            raise WorkspaceError(f"blob {digest[:12]} does not match its hash; discarded")
        path = self._blob_path(digest)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)

    def env_path(self, dist_id: str) -> Path:
        return self.envs / dist_id

    def materialize(self, dist_id: str, entries: list[Entry], in_use: set[str]) -> Path:
        """Build the environment tree for ``dist_id`` from stored blobs; return its path."""
        final = self.env_path(dist_id)
        if final.is_dir():
            _touch(final)
            return final
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
            try:
                os.rename(tmp, final)
            except OSError:  # another daemon sharing the store built it first
                shutil.rmtree(tmp, ignore_errors=True)
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
                shutil.rmtree(p, ignore_errors=True)
        # Stale temporaries from a daemon that died mid-build.
        for p in self.envs.glob(".tmp-*"):
            if p.stat().st_mtime < time.time() - 3600:
                shutil.rmtree(p, ignore_errors=True)

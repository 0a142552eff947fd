"""The worker's content-addressed store: verified blobs and the environments built from them.

Layout under the worker's cache folder::

    blobs/ab/abcdef...      one file per content hash, written atomically after verification
    envs/<dist id>/         a distribution materialised as a tree: hard links to the blobs
                            (executable files are copies: a link shares its mode), and the
                            compiled modules

Disk is bounded by ``max_bytes``: the least recently used trees no task needs, then blobs no
tree links, go first. A tree of links costs almost nothing beyond its blobs, so a run that
changes one small file adds about that file.

Several daemons may share one store: every write goes to a temporary name and is renamed into
place, so a reader sees a whole file or tree or nothing.

Nothing on disk is trusted for what it holds: each daemon hashes a blob and a tree the first
time it uses them, and afterwards hashes again only what a stat shows may have changed
(``workspace._verify``).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from distrib._errors import WorkspaceError
from distrib.wire._limits import MAX_FILE_BYTES
from distrib.workspace._manifest import Entry
from distrib.workspace._verify import (Record, Signature, check, compile_module, file_hash,
                                       first_check, record, signature)

log = logging.getLogger("distrib.store")


def _touch(path: Path) -> None:
    # The modification time records the last use; eviction goes by it.
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def default_max_bytes(root: Path) -> int:
    """A quarter of the free disk where the cache lives, at least 1 GiB."""
    root.mkdir(parents=True, exist_ok=True)
    return max(1 << 30, shutil.disk_usage(root).free // 4)


class Store:
    """Blobs and environments under ``root``, at most ``max_bytes`` of them (see above)."""

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self._blobs = str(self.blobs)
        self.envs = root / "envs"
        self._records: dict[str, Record] = {}  # trees this daemon checked, by id
        self._verified: dict[str, Signature] = {}  # blobs this daemon checked (or wrote)
        self.max_bytes = default_max_bytes(root) if max_bytes is None else max_bytes
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._fanout: threading.Thread | None = None
        if not (self.blobs / "ff").is_dir():
            # Every fan-out folder at once: made one by one as blobs arrive, they cost more
            # than writing the blobs (a first workspace of 300 files took 100 ms, not 15).
            # In a thread: a daemon starting with an empty store need not wait for them.
            self._fanout = threading.Thread(target=self._make_fanout, name="distrib-store",
                                            daemon=True)
            self._fanout.start()
        self.envs.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / "stamps", ignore_errors=True)  # (sizes and times, once kept here)
        os.chmod(root, 0o700)

    def _make_fanout(self) -> None:
        for i in range(256):
            with contextlib.suppress(OSError):  # (then a blob's write says what is wrong)
                (self.blobs / f"{i:02x}").mkdir(exist_ok=True)

    def clean_leftovers(self, age: float = 3600.0) -> None:
        """Remove temporaries older than ``age`` seconds (a daemon died mid-write; younger ones
        may be another daemon's, sharing this store, at work)."""
        old = time.time() - age
        for path in [*self.envs.glob(".tmp-*"), *self.envs.glob(".trash-*"),
                     *self.blobs.glob("*/.tmp-*")]:
            try:
                if path.lstat().st_mtime < old:
                    remove = shutil.rmtree if path.is_dir() else os.unlink
                    remove(path)
            except OSError:
                pass

    def blob_path(self, digest: str) -> Path:
        """Where the blob ``digest`` is kept."""
        return Path(self._blob_name(digest))

    def _blob_name(self, digest: str) -> str:
        # (a string: a Path per file cost more than the file's write, for a first workspace
        # of hundreds of small files)
        return f"{self._blobs}/{digest[:2]}/{digest}"

    def has(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def missing(self, entries: list[Entry]) -> list[str]:
        """Digests of ``entries`` not in the store, each once; a blob found there is hashed
        first unless this daemon did since it last changed, and removed if it no longer
        matches (then it is missing)."""
        out: dict[str, None] = {}
        for e in entries:
            if e.digest not in out and not self._good(e.digest):
                out[e.digest] = None
        return list(out)

    def _good(self, digest: str, path: str | None = None) -> bool:
        """The blob is here (at ``path``, if given) and holds what its hash says (see
        ``missing``)."""
        path = path or self._blob_name(digest)
        try:
            seen = signature(os.lstat(path))
        except OSError:
            return False
        if self._verified.get(digest) == seen:
            return True
        if file_hash(path) == digest:
            self._verified[digest] = seen  # (taken before hashing: a later write moves it)
            return True
        log.warning("blob %s no longer matches its hash; removed", digest[:12])
        self._verified.pop(digest, None)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return False

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
        self.put(digest, raw)

    def put(self, digest: str, raw: bytes) -> None:
        """Store one blob, ``WorkspaceError`` if it does not match ``digest``."""
        if hashlib.sha256(raw).hexdigest() != digest:
            raise WorkspaceError(f"blob {digest[:12]} does not match its hash; discarded")
        if self._fanout is not None:
            self._fanout.join()
            self._fanout = None
        path = self._blob_name(digest)
        st = _write_atomically(path, raw, mode=0o644)  # environments link it
        self._verified[digest] = signature(st)

    def env_path(self, dist_id: str) -> Path:
        return self.envs / dist_id

    def drift(self, dist_id: str, entries: list[Entry] | None = None) -> list[str]:
        """Files of the environment tree that differ from its manifest (changed, missing or
        added), by their content; empty when it is whole. A tree this daemon has not checked
        yet is checked against ``entries`` (every file hashed), without them it counts as
        drifted; a tree it has is checked by a stat of each file, and a hash of those that
        moved."""
        tree, rec = self.env_path(dist_id), self._records.get(dist_id)
        if rec is not None:
            return check(tree, rec)
        if entries is None:
            return ["(not checked by this daemon yet)"]
        drifted, rec = first_check(tree, entries)
        if rec is not None:
            self._records[dist_id] = rec
        return drifted

    def used(self, dist_id: str) -> None:
        """A run uses the tree: the least recently used go first when disk is short."""
        with contextlib.suppress(OSError):
            _touch(self.env_path(dist_id))

    def discard(self, dist_id: str) -> None:
        """Remove an environment tree (moved aside first, so no one sees half of it)."""
        final = self.env_path(dist_id)
        trash = Path(tempfile.mkdtemp(dir=self.envs, prefix=".trash-"))
        try:
            os.rename(final, trash / "tree")
        except OSError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
        self._records.pop(dist_id, None)

    def ensure_whole(self, dist_id: str, entries: list[Entry],
                     before_removal: Callable[[], object] = lambda: None) -> bool:
        """Check an existing tree against its manifest (``drift``): one that drifted (a file
        changed by hand, or by a task through the tree's real path, say) is logged with the
        file names and removed after ``before_removal()`` (which stops what uses it); a blob
        it corrupted (a tree's files are links to them) is found by ``missing``, which then
        names what to fetch again. True if it had drifted."""
        if not self.env_path(dist_id).is_dir():
            self._records.pop(dist_id, None)
            return False
        drifted = self.drift(dist_id, entries)
        if drifted:
            before_removal()
            log.warning("environment %s drifted from its manifest (%s); building it again from "
                        "the blob store", dist_id[:12], _names(drifted))
            self.discard(dist_id)
        return bool(drifted)

    def materialize(self, dist_id: str, entries: list[Entry], main: str | None = None,
                    imports: Sequence[str] = (), folders: Sequence[str] = ()) -> Path:
        """Build the environment tree for ``dist_id`` from stored blobs (unless it exists:
        ``ensure_whole`` checks it first), with ``folders`` (that hold no file) made in it;
        return its path. The ``main`` script and the modules of ``imports`` found in the
        tree are compiled now."""
        final = self.env_path(dist_id)
        if final.is_dir():
            _touch(final)
            return final
        tmp = Path(tempfile.mkdtemp(dir=self.envs, prefix=".tmp-"))
        base = str(tmp)
        made = {""}  # folders of the tree made so far (one mkdir each, not one per file)
        try:
            for folder in folders:  # (checked paths: ``decode_manifest``)
                os.makedirs(f"{base}/{folder}", exist_ok=True)
            for e in entries:
                src = self._blob_name(e.digest)
                dst = f"{base}/{e.path}"
                folder = e.path.rpartition("/")[0]
                if folder not in made:
                    os.makedirs(f"{base}/{folder}", exist_ok=True)
                    made.add(folder)
                if not self._good(e.digest, src):  # (changed since ``missing`` checked it:
                    # removed, so the next attempt fetches it)
                    raise WorkspaceError(f"blob {e.digest[:12]} of {e.path} changed in the "
                                         f"store while {dist_id[:12]} was built")
                if e.executable:
                    shutil.copyfile(src, dst)
                    os.chmod(dst, 0o755)
                else:
                    os.link(src, dst)
                    self._verified[e.digest] = signature(os.lstat(src))  # (the link moved it)
            # What executors import first is compiled now, once (they only read the tree: their
            # writes go elsewhere). The rest is compiled by whoever imports it: a workspace's
            # tests and scripts no task imports cost nothing (compiling all of a 130-module
            # workspace took 60 ms of a first call).
            for path in _module_files(entries, main, imports):
                compile_module(tmp, path, final)
            rec = record(tmp, entries)
            try:
                os.rename(tmp, final)
            except OSError:  # another daemon sharing the store built it first: checked here
                shutil.rmtree(tmp, ignore_errors=True)
                if self.ensure_whole(dist_id, entries):
                    raise WorkspaceError(f"environment {dist_id[:12]}, built by another daemon "
                                         "sharing this cache, drifted; built again at the next "
                                         "attempt") from None
            else:
                self._records[dist_id] = rec
                for e in entries:  # (linking moved their blobs' change times)
                    if not e.executable and e.path in rec.seen:
                        self._verified[e.digest] = rec.seen[e.path]
            _touch(final)
        except FileNotFoundError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise WorkspaceError(f"blob missing while building {dist_id[:12]}: {exc}") from None
        except WorkspaceError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def usage(self) -> int:
        """Bytes the store takes on disk, each file counted once (links are free)."""
        total, seen = 0, set()
        for folder, _, files in os.walk(self.root):
            for name in files:
                try:
                    st = os.lstat(os.path.join(folder, name))
                except OSError:  # (gone meanwhile: a task's scratch layer, say)
                    continue
                if st.st_ino not in seen:
                    seen.add(st.st_ino)
                    total += st.st_size
        return total

    def evict(self, keep: set[str], keep_blobs: set[str]) -> list[str]:
        """Over ``max_bytes``: remove the least recently used trees not in ``keep``, then the
        oldest blobs no tree links and not in ``keep_blobs``, until under. Returns the trees
        removed."""
        over = self.usage() - self.max_bytes
        if over <= 0:
            return []
        removed: list[str] = []
        envs = sorted((p for p in self.envs.iterdir() if not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime_ns)
        for env in envs:
            if over <= 0:
                break
            if env.name not in keep:
                log.info("evicting environment %s (the cache is over %d bytes)", env.name[:12],
                         self.max_bytes)
                over -= _own_bytes(env)  # (not a walk of the whole store per tree)
                self.discard(env.name)
                removed.append(env.name)
        blobs = sorted((p for p in self.blobs.glob("*/*") if not p.name.startswith(".")),
                       key=lambda p: p.stat().st_mtime_ns)
        for blob in blobs:
            if over <= 0:
                break
            st = blob.stat()
            if st.st_nlink == 1 and blob.name not in keep_blobs:  # no tree links it
                blob.unlink()
                self._verified.pop(blob.name, None)
                over -= st.st_size
        return removed


def _module_files(entries: list[Entry], main: str | None, imports: Sequence[str]) -> list[str]:
    """Paths in the tree of the ``main`` script and of the modules named in ``imports`` (and
    of their packages), found by their path's ending (a ``src/`` layout matches too)."""
    python = {e.path for e in entries if e.path.endswith(".py")}
    wanted = {main} if main in python else set()
    endings: set[str] = set()
    for name in imports:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            base = "/".join(parts[:i])
            endings.update((base + "/__init__.py", base + ".py"))
    for path in python:
        segments = path.split("/")
        if any("/".join(segments[k:]) in endings for k in range(len(segments))):
            wanted.add(path)
    return sorted(wanted)


_unique = itertools.count()  # temporary names: with the pid, unique among daemons sharing a store


def _write_atomically(path: str, data: bytes, mode: int = 0o600) -> os.stat_result:
    """Write ``path`` whole or not at all (a temporary file renamed into place); its stat."""
    folder = os.path.dirname(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    while True:
        tmp = f"{folder}/.tmp-{os.getpid()}-{next(_unique)}"
        try:
            fd = os.open(tmp, flags, 0o600)
            break
        except FileExistsError:  # (left by a daemon of the same pid, long gone)
            continue
        except FileNotFoundError:  # (its folder is made on demand)
            os.makedirs(folder, exist_ok=True)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(fd, mode)
            os.replace(tmp, path)
            return os.fstat(fd)  # (after the rename, which moves its change time)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _own_bytes(tree: Path) -> int:
    """Bytes that removing ``tree`` frees: its files no other name links (copies, compiled
    modules), not its links to blobs."""
    total = 0
    for folder, _, files in os.walk(tree):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            total += st.st_size if st.st_nlink == 1 else 0
    return total


def _names(paths: list[str], most: int = 10) -> str:
    more = f" and {len(paths) - most} more" if len(paths) > most else ""
    return ", ".join(paths[:most]) + more

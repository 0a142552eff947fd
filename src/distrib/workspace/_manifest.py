"""Scan a workspace into a manifest of (path, size, mode, content hash); its hash is the id.

Both sides use this module: the Main scans and encodes, the worker decodes and validates
(a manifest is untrusted input there: every path and number is checked).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
from msgspec import Struct

from distrib._errors import WorkspaceError
from distrib.wire._limits import (
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_PATH_CHARS,
    MAX_PATH_DEPTH,
    MAX_TOTAL_BYTES,
)

log = logging.getLogger("distrib.workspace")

ALWAYS_EXCLUDED = (
    ".git/",
    "__pycache__/",
    "*.pyc",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".tox/",
    ".nox/",
    ".ipynb_checkpoints/",
    "*.egg-info/",
    ".DS_Store",
)
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_LISTING_VERSION = "2"  # (a change in what a walk keeps makes every kept listing stale)
_RECENT_NS = 2_000_000_000  # folders changed this recently: their listing is not kept


class Entry(Struct, frozen=True):
    """One file of a distribution: relative POSIX path, size, executable bit, sha256 hex."""

    path: str
    size: int
    executable: bool
    digest: str


@dataclass(frozen=True)
class Distribution:
    """A scanned workspace: its entries, the main script's relative path, and its id."""

    root: Path
    main: str | None
    entries: tuple[Entry, ...]
    encoded: bytes
    dist_id: str
    by_digest: dict[str, Entry] = field(default_factory=dict, compare=False, repr=False)
    folders: tuple[str, ...] = ()  # folders that hold no shipped file (``results/``, say)

    def path_of(self, digest: str) -> Path | None:
        """The local file holding ``digest`` (the Main serves blobs from the workspace)."""
        entry = self.by_digest.get(digest)
        return None if entry is None else self.root / entry.path


class Manifest(NamedTuple):
    """What a manifest says: the main script, the files, and the folders holding none."""

    main: str | None
    entries: list[Entry]
    folders: list[str]


def encode_manifest(main: str | None, entries: list[Entry],
                    folders: Sequence[str] = ()) -> tuple[bytes, str]:
    """Canonical bytes of a manifest and its id (sha256 of those bytes). Empty ``folders``
    are left out of it: a workspace without any keeps the id it had before they were sent."""
    body: dict[str, Any] = {
        "main": main, "entries": [[e.path, e.size, e.executable, e.digest] for e in entries]}
    if folders:
        body["folders"] = list(folders)
    packed = msgpack.packb(body)
    return packed, hashlib.sha256(packed).hexdigest()


def decode_manifest(data: bytes, dist_id: str) -> Manifest:
    """Parse and validate a manifest received from the network; ``WorkspaceError`` if bad."""
    if hashlib.sha256(data).hexdigest() != dist_id:
        raise WorkspaceError(f"manifest does not hash to its distribution id {dist_id}")
    try:
        body: Any = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise WorkspaceError(f"manifest is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(body, dict) or not {"main", "entries"} <= set(body) <= {
            "main", "entries", "folders"}:
        raise WorkspaceError("manifest must be a map of 'main', 'entries' and 'folders'")
    main = body["main"]
    raw_entries = body["entries"]
    folders = body.get("folders", [])
    if main is not None and not isinstance(main, str):
        raise WorkspaceError("manifest 'main' must be a path or nil")
    if not isinstance(raw_entries, list) or len(raw_entries) > MAX_FILES:
        raise WorkspaceError(f"manifest 'entries' must be a list of at most {MAX_FILES}")
    if not isinstance(folders, list) or len(folders) + len(raw_entries) > MAX_FILES:
        raise WorkspaceError(f"manifest 'folders' must be a list, of at most {MAX_FILES} with "
                             "the entries")
    entries: list[Entry] = []
    seen: set[str] = set()
    total = 0
    for raw in raw_entries:
        if not (isinstance(raw, list) and len(raw) == 4):
            raise WorkspaceError("manifest entry must be [path, size, executable, digest]")
        path, size, executable, digest = raw
        check_relative_path(path)
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_BYTES:
            raise WorkspaceError(f"manifest entry {path!r}: bad size {size!r}")
        if not isinstance(executable, bool) or not (
            isinstance(digest, str) and _HASH_RE.match(digest)
        ):
            raise WorkspaceError(f"manifest entry {path!r}: bad mode or digest")
        if path in seen:
            raise WorkspaceError(f"manifest lists {path!r} twice")
        seen.add(path)
        total += size
        entries.append(Entry(path, size, executable, digest))
    if total > MAX_TOTAL_BYTES:
        raise WorkspaceError(f"manifest totals {total} bytes, over the {MAX_TOTAL_BYTES} limit")
    files = set(seen)
    for folder in folders:
        check_relative_path(folder)
        if folder in seen:
            raise WorkspaceError(f"manifest lists {folder!r} twice")
        seen.add(folder)
    # A file may not also be a folder of another entry, or of a folder listed. Sorted by
    # their parts, the paths under a file come right after it: one look at each neighbour (linear, whatever the
    # depth; checking every parent of every path cost depth squared and stalled the loop).
    ordered = sorted(seen, key=lambda p: p.replace("/", "\0"))  # ("\0": before any character)
    for path, following in zip(ordered, ordered[1:]):
        if path in files and following.startswith(path + "/"):
            raise WorkspaceError(f"manifest entry {following!r} lies under file {path}")
    if main is not None and main not in files:
        raise WorkspaceError(f"manifest main script {main!r} is not in its entries")
    return Manifest(main, entries, folders)


def check_relative_path(path: Any) -> None:
    """Reject anything but a plain relative POSIX path inside the tree."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS:
        shown = path[:200] if isinstance(path, str) else path
        raise WorkspaceError(f"bad path in manifest: {shown!r}")
    if path.count("/") >= MAX_PATH_DEPTH:
        raise WorkspaceError(f"path {path[:200]!r}... is more than {MAX_PATH_DEPTH} folders deep")
    if "\\" in path or "\x00" in path or path.startswith("/") or ":" in path.split("/")[0]:
        raise WorkspaceError(f"path is not a relative POSIX path: {path!r}")
    wrapped = f"/{path}/"  # string searches, not a split: linear in the path's length
    if "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
        raise WorkspaceError(f"path leaves or escapes the tree: {path!r}")


class HashCache:
    """Remembers file digests by (path, size, mtime) so a rerun does not rehash unchanged files."""

    def __init__(self, file: Path | None) -> None:
        self._file = file
        self._data: dict[str, list[Any]] = {}
        self._dirty = False
        if file is not None and file.exists():
            try:
                loaded = msgpack.unpackb(file.read_bytes(), raw=False)
                if isinstance(loaded, dict):
                    self._data = loaded
            except Exception:  # a corrupt cache is only a slower scan
                log.debug("ignoring unreadable hash cache %s", file)

    def digest(self, path: Path | str, st: os.stat_result) -> str:
        key = str(path)
        hit = self._data.get(key)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return str(hit[2])
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        self._data[key] = [st.st_size, st.st_mtime_ns, digest]
        self._dirty = True
        return digest

    def listing(self, root: Path, key: str) -> list[str] | None:
        """The files a walk of ``root`` kept last time (``key``: its patterns and skipped
        paths), if no folder it listed changed since: adding, removing or renaming a file
        moves its folder's modification time. A rerun then neither walks nor matches
        patterns: it stats each file, as it must for their hashes."""
        kept = self._data.get("")
        if not (isinstance(kept, list) and len(kept) == 3 and kept[0] == key):
            return None
        try:
            for rel, mtime in kept[1]:
                st = os.lstat(os.path.join(root, rel))
                if not stat.S_ISDIR(st.st_mode) or st.st_mtime_ns != mtime:
                    return None
        except (OSError, TypeError, ValueError):
            return None
        return [str(name) for name in kept[2]]

    def keep_listing(self, key: str, folders: list[tuple[str, int]], names: list[str]) -> None:
        """Keep a walk's result, unless a folder changed within the last seconds: a file
        added in the same tick of the file system's clock as the time seen would not move
        it (as git's index, a time that recent is not trusted)."""
        recent = time.time_ns() - _RECENT_NS
        if all(mtime < recent for _, mtime in folders):
            self._data[""] = [key, [list(f) for f in folders], names]
        else:
            self._data.pop("", None)
        self._dirty = True

    def save(self) -> None:
        if self._file is None or not self._dirty:
            return
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(msgpack.packb(self._data))
            os.replace(tmp, self._file)
        except OSError as exc:
            log.debug("could not save hash cache: %s", exc)


SECRET_KEY_HEADER = b"# distrib secret key"


def _is_secret_key(path: Path | str, size: int) -> bool:
    """A key file written by ``distrib keygen``: never shipped, wherever it lies."""
    if not 100 <= size <= 400:  # such files are ~140 bytes: only those are opened
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(SECRET_KEY_HEADER)) == SECRET_KEY_HEADER
    except OSError:
        return False


def _is_venv(folder: Path) -> bool:
    return (folder / "pyvenv.cfg").is_file()


def _walk(root: Path, patterns: list[str], skipped: set[Path]
          ) -> tuple[list[str], list[tuple[str, int]]]:
    """The files under ``root`` the patterns leave in (relative paths, in walk order; the
    folders entered too, ending in ``/``), and each folder whose listing decided them with
    its modification time, taken before it was listed (see ``HashCache.listing``)."""
    import pathspec  # (tens of ms: imported where matched, only when the tree changed)

    spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    names: list[str] = []
    folders = [("", os.stat(root).st_mtime_ns)]
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        # (``here`` is a real path: ``root`` is resolved and linked folders are not entered,
        # so only links need resolving to compare with ``skipped``)
        kept = []
        for d in sorted(dirnames):
            if spec.match_file(prefix + d + "/") or (here / d).is_symlink() \
                    or here / d in skipped:
                continue
            try:  # (a venv is left out by what it holds, not by its name: watched too)
                folders.append((prefix + d, os.stat(here / d).st_mtime_ns))
            except OSError:
                continue
            if not _is_venv(here / d):
                kept.append(d)
        dirnames[:] = kept
        names.extend(prefix + d + "/" for d in kept)
        names.extend(prefix + name for name in sorted(filenames)
                     if not spec.match_file(prefix + name))
    return names, folders


def scan(
    root: Path,
    main: Path | None,
    excludes: tuple[str, ...] = (),
    cache_file: Path | None = None,
    skip: tuple[Path, ...] = (),
) -> Distribution:
    """Scan ``root`` into a Distribution. ``main`` is the main script, if inside ``root``.

    ``skip``: folders and files never shipped, such as distrib's own cache when it lies in the
    workspace, or files this process is writing (a ``> run.log`` redirect).
    """
    root = root.resolve()
    skipped = {p.resolve() for p in skip}
    if not root.is_dir():
        raise WorkspaceError(f"workspace {root} is not a folder; set 'workspace' to a folder")
    patterns = list(ALWAYS_EXCLUDED) + list(excludes)
    gitignore = root / ".gitignore"
    if gitignore.is_file():
        patterns += gitignore.read_text(errors="replace").splitlines()
    cache = HashCache(cache_file)
    # (skipped paths outside the tree, such as where this process's output goes, change
    # nothing in its listing)
    inside = sorted(str(p) for p in skipped if p.is_relative_to(root))
    key = hashlib.sha256("\0".join([_LISTING_VERSION, str(root), *patterns, "",
                                      *inside]).encode()).hexdigest()
    names = cache.listing(root, key)
    if names is None:
        names, folders = _walk(root, patterns, skipped)
        cache.keep_listing(key, folders, names)
    entries: list[Entry] = []
    found: list[str] = []  # folders (see ``_empty``)
    total = 0
    base = str(root).rstrip("/")  # (no "//" at the file system's root)
    skipped_names = {str(p) for p in skipped}
    for rel in names:
        path = f"{base}/{rel}"  # (a string: a Path per file cost more than its stat)
        if rel.endswith("/"):
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    found.append(rel[:-1])
            continue
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target = Path(path).resolve()
                if target in skipped:
                    continue
                if not target.is_relative_to(root):
                    log.warning("workspace: skipping %s, a link that leaves the tree", rel)
                    continue
                st = os.stat(path)
            elif path in skipped_names:
                continue
        except OSError as exc:
            log.warning("workspace: skipping %s: %s", rel, exc)
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if _is_secret_key(path, st.st_size):
            log.info("workspace: leaving out %s, a secret key", rel)
            continue
        if st.st_size > MAX_FILE_BYTES:
            raise WorkspaceError(
                f"workspace file {rel} is {st.st_size} bytes, over the {MAX_FILE_BYTES} "
                "limit; add it to the workspace excludes"
            )
        total += st.st_size
        entries.append(Entry(rel, st.st_size, bool(st.st_mode & 0o111), cache.digest(path, st)))
        if len(entries) > MAX_FILES or total > MAX_TOTAL_BYTES:
            raise WorkspaceError(
                f"workspace {root} holds over {MAX_FILES} files or {MAX_TOTAL_BYTES} bytes; "
                "set 'workspace' to a smaller folder or add excludes"
            )
    cache.save()
    main_rel: str | None = None
    if main is not None:
        main_abs = main.resolve()
        if main_abs.is_relative_to(root):
            candidate = main_abs.relative_to(root).as_posix()
            if any(e.path == candidate for e in entries):
                main_rel = candidate
    entries.sort(key=lambda e: e.path)
    empty = _empty(found, entries)
    if len(entries) + len(empty) > MAX_FILES:
        raise WorkspaceError(
            f"workspace {root} holds over {MAX_FILES} files and empty folders; set "
            "'workspace' to a smaller folder or add excludes")
    encoded, dist_id = encode_manifest(main_rel, entries, empty)
    return Distribution(
        root, main_rel, tuple(entries), encoded, dist_id, {e.digest: e for e in entries},
        tuple(empty)
    )


def _empty(folders: list[str], entries: list[Entry]) -> list[str]:
    """The ``folders`` holding no shipped file and no other of them: where a task must find a
    folder that would otherwise not be in its tree (an empty ``results/``, say). Their
    parents are made with them."""
    held: set[str] = set()
    for path in [*(e.path for e in entries), *folders]:
        parts = path.split("/")
        held.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return sorted(f for f in folders if f not in held)

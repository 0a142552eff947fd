"""The workspace as this Main ships it: found and scanned at set-up, served blob by blob.

A file that changed since the scan no longer matches its hash: the distribution is failed for
that worker (``DistFailed``), and a rerun ships the new version.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path


from msgspec import structs

from distrib._config import Settings
from distrib.wire import _messages as m
from distrib.wire._payload import blob_batches
from distrib.workspace._manifest import Distribution, encode_manifest, scan

log = logging.getLogger("distrib")


def _files_being_written() -> list[Path]:
    """Files this process has open for writing (its own log, a ``> out.txt`` redirect): they
    change while tasks run, so shipping them would fail the distribution's hash check."""
    if sys.platform.startswith("linux"):  # (read as psutil does, without its 20 ms import)
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError:
            fds = []
        out = []
        for fd in fds:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
                with open(f"/proc/self/fdinfo/{fd}") as info:
                    flags = next(int(line.split()[1], 8) for line in info
                                 if line.startswith("flags:"))
            except (OSError, ValueError, StopIteration, IndexError):
                continue  # (closed meanwhile: the listing's own descriptor, say)
            if flags & (os.O_WRONLY | os.O_RDWR) and target.startswith("/") \
                    and os.path.isfile(target):
                out.append(Path(target))
        return out
    import psutil

    try:
        return [Path(f.path) for f in psutil.Process().open_files()
                if any(c in f.mode for c in "wa+")]
    except psutil.Error:
        return []


# os.environ["X"], os.environ.get("X"), os.getenv("X"), environ.get("X"), getenv("X"). Each
# starts with a plain word, which the regex engine finds by a fast search (one pattern with
# ``\b`` before the alternatives tried every position: 36 ms for this repository's modules,
# now 6); the word's start is checked after.
_ENV_READS = (
    re.compile(rb"""environ(?:\s*\[|\.get\s*\()\s*["']([A-Za-z_][A-Za-z0-9_]*)["']"""),
    re.compile(rb"""getenv\s*\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']"""),
)
_WORD = re.compile(rb"\w")


def _names_read(source: bytes) -> set[str]:
    """The variables ``source`` reads by name (see ``_ENV_READS``)."""
    return {found.group(1).decode() for pattern in _ENV_READS
            for found in pattern.finditer(source)
            if not found.start() or not _WORD.match(source, found.start() - 1)}
# Never forwarded: they would change how the executor itself starts, or are distrib's own.
_NOT_FORWARDED = ("PYTHON*", "LD_*", "DYLD_*", "DISTRIB_*")
_MAX_SOURCE = 2 << 20  # larger .py files are not read for variable names


def forwarded_environ(dist: Distribution, patterns: tuple[str, ...],
                      environ: Mapping[str, str], cache: Path | None = None) -> dict[str, str]:
    """The variables workers get: those the workspace's code reads by name, and those matching
    ``patterns``; nothing else (a Main's credentials must not reach a lent machine)."""
    names = set(_read_by_name(dist, cache))
    names.update(n for n in environ if any(fnmatch.fnmatchcase(n, p) for p in patterns))
    return {n: environ[n] for n in sorted(names) if n in environ
            and not any(fnmatch.fnmatchcase(n, p) for p in _NOT_FORWARDED)}


def _read_by_name(dist: Distribution, cache: Path | None) -> list[str]:
    """The variables the workspace's modules read by name; kept in ``cache`` by the modules'
    hashes (the manifest has them): a run whose modules did not change reads none of them."""
    sources = [(e.path, e.digest) for e in dist.entries
               if e.path.endswith(".py") and e.size <= _MAX_SOURCE]
    memo = None if cache is None else cache / "environ" / hashlib.sha256(
        repr(sources).encode()).hexdigest()[:32]
    try:
        if memo is not None:
            return memo.read_text().split()
    except OSError:
        pass
    names: set[str] = set()
    for path, _ in sources:
        try:
            source = (dist.root / path).read_bytes()
        except OSError:
            continue
        names.update(_names_read(source))
    if memo is not None:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{os.getpid()}-{memo.name}")
            tmp.write_text(" ".join(sorted(names)))
            os.replace(tmp, memo)  # (another Main may read it meanwhile)
        except OSError:
            pass
    return sorted(names)


_PROJECT_MARKERS = ("pyproject.toml", "setup.py", ".git", "conftest.py")


def pytest_project() -> Path | None:
    """Under pytest (imported here, running a test), its root folder when that is a project
    (one of ``_PROJECT_MARKERS`` in it), so that the test modules' functions run on workers;
    else None. The root is the folder above the current one that holds the running test's
    file by its node id (node ids are relative to pytest's root)."""
    current = os.environ.get("PYTEST_CURRENT_TEST")
    if "_pytest" not in sys.modules or not current:
        return None
    test_file = current.rsplit(" (", 1)[0].split("::", 1)[0]
    if not test_file:
        return None
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / test_file).is_file():
            if any((folder / marker).exists() for marker in _PROJECT_MARKERS):
                return folder
            return None
    return None


_PRELOAD_MAX = 500


def preload_modules(root: Path | None) -> list[str]:
    """Modules this Main has imported that its tasks will likely import too, for executors'
    templates to import once: the workspace's own (by full name) and installed packages (by
    top-level name); not the standard library's, not distrib's own, not private ones."""
    from distrib import _runtime

    base = str(root.resolve()) + os.sep if root is not None else None
    out = []
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        if (name.startswith("_") or top in sys.stdlib_module_names
                or name in _runtime.own_modules):
            continue
        path = getattr(module, "__file__", None)
        if not isinstance(path, str):
            continue
        if base is not None and os.path.abspath(path).startswith(base):
            out.append(name)
        elif "." not in name:
            out.append(name)
    return sorted(out)[:_PRELOAD_MAX]


def scan_workspace(settings: Settings, main_file: Path | None) -> Distribution:
    """Scan the configured workspace (default: the main script's folder).

    Without a main script (a REPL, ``python -c``, a script on stdin) and no workspace
    configured, nothing is shipped: the current folder may be a home folder of 200,000 files.
    Under pytest, the tests' project is (see ``pytest_project``).
    """
    project = pytest_project() if settings.workspace is None and main_file is None else None
    if project is not None:
        log.warning("under pytest with no main script: the test project %s is the workspace "
                    "shipped to workers", project)
        settings = structs.replace(settings, workspace=project)
    if settings.workspace is None and main_file is None:
        log.warning("no main script (a REPL, python -c or stdin): no workspace is shipped and "
                    "functions travel by value; set a workspace (distrib.init(workspace=...), "
                    "DISTRIB_WORKSPACE or [main] workspace) to ship a folder")
        encoded, dist_id = encode_manifest(None, [])
        return Distribution(Path.cwd(), None, (), encoded, dist_id)
    root = settings.workspace or (main_file.parent if main_file else Path.cwd())
    cache = settings.cache_dir / "hashes" / (
        hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16] + ".msgpack")
    from distrib import _runtime

    before = set(sys.modules)  # (pathspec, imported only when the tree is walked: distrib's
    # own, or a run that walks would preload it in its templates and one that does not would
    # not, and the two could not share a lingering daemon's executors)
    try:
        return scan(root, main_file, settings.excludes, cache,
                    skip=(settings.cache_dir, *_files_being_written()))
    finally:
        _runtime.own_modules.update(set(sys.modules) - before)


def blob_messages(dist: Distribution, need: m.NeedBlobs, env_id: str,
                  wheels: Mapping[str, Path], level: int = 1
                  ) -> Iterator[m.Blobs | m.DistFailed]:
    """The messages answering ``need`` (of the workspace, or of the wheels the environment
    ``env_id`` ships): Blobs of at most ``BLOB_BATCH_BYTES``, compressed at zlib ``level``,
    or a DistFailed (after which nothing more is sent)."""

    def read(digest: str) -> bytes | str:
        path = (dist.path_of(digest) if need.dist == dist.dist_id
                else wheels.get(digest) if need.dist == env_id else None)
        try:
            data = path.read_bytes() if path is not None else None
        except OSError as exc:
            data = None
            log.warning("cannot read workspace file for blob %s: %s", digest[:12], exc)
        if data is None or hashlib.sha256(data).hexdigest() != digest:
            entry = dist.by_digest.get(digest)
            what = entry.path if entry else digest[:12]
            return (f"workspace file {what} changed or vanished since the workspace was "
                    "scanned; run again")
        return data

    return blob_batches(need.dist, need.hashes, read, level)

"""The embedded cluster's first run: the workspace's files put in its daemon's store by the
Main while that daemon starts, so they need not travel through it.

A daemon starting takes a quarter of a second or more, during which the Main would only wait;
shipping afterwards (read, send, receive, check, write each file) came next on a first call's
path. The daemon trusts nothing it finds on disk: it hashes these blobs before it uses them,
as any other. The Main stops as soon as the daemon listens; what is left travels as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from distrib._errors import WorkspaceError
from distrib.workspace._manifest import Distribution
from distrib.workspace._store import Store

log = logging.getLogger("distrib")

CHECK_EVERY = 16  # files written between two looks at whether the daemon is ready
# Large files and workspaces travel as usual, saying so (``shipping the workspace``): a
# first run must not sit silent while the Main copies them.
MAX_FILE = 4 << 20
MAX_TOTAL = 32 << 20


def prefill(store_root: Path, dist: Distribution, starting: Callable[[], bool]) -> int:
    """Write the files of ``dist`` missing from the store at ``store_root`` while
    ``starting()`` says its daemon has not started; how many were written."""
    if not dist.entries or not starting():
        return 0
    try:
        store = Store(store_root)
    except OSError as exc:  # (the daemon says what is wrong with its cache)
        log.debug("cannot prefill the local worker's store: %s", exc)
        return 0
    written = size = 0
    for i, entry in enumerate(dist.entries):
        if i % CHECK_EVERY == 0 and i and not starting():
            break
        if entry.size > MAX_FILE or store.has(entry.digest):
            continue
        size += entry.size
        if size > MAX_TOTAL:
            break
        try:
            store.put(entry.digest, (dist.root / entry.path).read_bytes())
        except (OSError, WorkspaceError):  # (changed or gone since the scan: shipped, or
            continue  # reported, as usual)
        written += 1
    log.debug("put %d of the workspace's %d files in the local worker's store", written,
              len(dist.entries))
    return written

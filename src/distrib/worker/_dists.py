"""The distributions a worker fetches from its Mains and builds into environment trees.

    unknown --submit--> MANIFEST --Manifest--> BLOBS --Blobs (all)--> READY
                           |                     |
                           +----> forgotten <----+   (bad manifest or blob, DistFailed, build)

A distribution is fetched from one Main (its *source*) and belongs to the Mains that sent
tasks for it: a failure fails that attempt for the source's tasks only, and is forgotten, so
the next submit of the same id starts over; other Mains waiting for it fetch it themselves.
Only the source can fail a fetch (``DistFailed``); a source that stalls (say, one that claimed
an id and never sends its manifest) is replaced by a waiting Main after ``FETCH_STALL``
seconds. Everything received is checked against its hash, so whoever sends it, it is the same.
Sending goes through the ``send`` callable the daemon gives; nothing here touches a socket.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from msgspec import Struct, field

from distrib._errors import WorkspaceError
from distrib._logs import RateLimited
from distrib.wire import _messages as m
from distrib.wire._limits import NEED_BLOBS_COUNT
from distrib.wire._record import ErrorRecord
from distrib.workspace._manifest import Entry, decode_manifest, encode_manifest
from distrib.workspace._store import Store

log = logging.getLogger("distrib.worker")
peer_log = RateLimited(log)  # for what a remote peer (or task code) can trigger

Sender = Callable[[bytes, m.Message], None]
FETCH_STALL = 3.0  # seconds without progress before a waiting Main becomes the source
RECHECK_EVERY = 5.0  # seconds between checks of the trees tasks use (and at least 100 times
# what the last check took: a stat of each file, a hash of those that moved)


class DistState(enum.Enum):
    MANIFEST = "manifest"  # asked the source for the manifest
    BLOBS = "blobs"  # asked the source for the blobs the store lacks
    READY = "ready"  # the environment tree is built


class Dist(Struct, eq=False):
    """What the daemon knows of one distribution."""

    state: DistState
    source: bytes | None = None  # the Main it is fetched from
    main: str | None = None  # the main script's path in the tree
    entries: list[Entry] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # holding no file: made in its tree
    waiting_blobs: set[str] = field(default_factory=set)
    sizes: dict[str, int] = field(default_factory=dict)  # declared size of each blob
    env: Path | None = None
    users: set[bytes] = field(default_factory=set)  # Mains whose runs found it checked
    waiters: set[bytes] = field(default_factory=set)  # other Mains waiting while it is fetched
    progress_at: float = 0.0  # when the fetch last moved
    imports: tuple[str, ...] = ()  # modules its first Main had imported: compiled when built


class Ready(Struct, frozen=True):
    dist: str


class Failed(Struct, frozen=True):
    dist: str
    peer: bytes | None  # the Main whose attempt failed (its queued tasks of ``dist`` fail)
    info: dict[str, str]


Change = Ready | Failed | None


class Distributions:
    """Every distribution this daemon has heard of, by id."""

    def __init__(self, store: Store, send: Sender, replaced: Callable[[str], None],
                 active: Callable[[], set[str]] = set,
                 wanted_by: Callable[[str], bytes | None] = lambda dist: None) -> None:
        self.store = store
        self._send = send
        self._replaced = replaced  # told when a ready environment is dropped (its executors stop)
        self._active = active  # distributions with tasks queued or running: never evicted
        self._wanted_by = wanted_by  # a Main with tasks queued for a distribution, if any
        self._recheck_at = 0.0
        self._dists: dict[str, Dist] = {}
        self._built: set[str] = set()  # trees built since the store's size was last kept
        self.blobs_received = 0

    def get(self, dist_id: str) -> Dist | None:
        return self._dists.get(dist_id)

    def request(self, dist_id: str, peer: bytes, imports: Sequence[str] = ()) -> Dist:
        """A task of ``dist_id`` came from ``peer`` (which had imported ``imports``): start
        fetching it if it is new.

        A ready environment is checked against how it was built the first time each Main
        uses it; one that drifted is dropped and fetched and built again."""
        dist = self._dists.get(dist_id)
        if dist is not None and dist.state is DistState.READY and peer not in dist.users:
            # (a drifted tree's executors stop before it is removed)
            if self.store.ensure_whole(dist_id, dist.entries, lambda: self._replaced(dist_id)):
                del self._dists[dist_id]
                dist = None
            else:
                dist.users.add(peer)
                self.store.used(dist_id)
        if dist is None:
            dist = self._dists[dist_id] = Dist(DistState.MANIFEST, source=peer, users={peer},
                                               progress_at=time.monotonic(),
                                               imports=tuple(imports))
            self._send(peer, m.NeedManifest(dist_id))
        elif dist.state is not DistState.READY and peer != dist.source:
            dist.waiters.add(peer)
        return dist

    def manifest(self, dist_id: str) -> bytes | None:
        """The manifest of a distribution here, as its Main sent it (for a worker that
        lacks it: ``worker._direct``)."""
        dist = self._dists.get(dist_id)
        if dist is None or dist.state is not DistState.READY:
            return None
        body, digest = encode_manifest(dist.main, dist.entries, dist.folders)
        return body if digest == dist_id else None

    def blob(self, dist_id: str, digest: str) -> bytes | None:
        """A file of a distribution here, by its hash (the receiver checks it)."""
        dist = self._dists.get(dist_id)
        if dist is None or dist.state is not DistState.READY or not any(
                e.digest == digest for e in dist.entries):
            return None
        try:
            return self.store.blob_path(digest).read_bytes()
        except OSError:
            return None

    def _evict(self, keep: set[str]) -> None:
        """Keep the store under its size: trees no task needs go, with their executors."""
        fetching = {d for d, x in self._dists.items() if x.state is not DistState.READY}
        keep_blobs = {e.digest for d in fetching for e in self._dists[d].entries}
        for dist_id in self.store.evict(keep | fetching | self._active(), keep_blobs):
            self._replaced(dist_id)
            self._dists.pop(dist_id, None)

    def tick(self, now: float) -> None:
        """Fetches that stalled ask a waiting Main instead (each answer is hash-checked); the
        trees tasks use are checked again now and then; the store is kept under its size
        once trees were built (a walk of all of it: not before their first tasks)."""
        if self._built:
            built, self._built = self._built, set()
            self._evict(keep=built)
        if now >= self._recheck_at:
            self._recheck(now)
        for dist_id, dist in self._dists.items():
            if dist.state is DistState.READY or not dist.waiters:
                continue
            if now - dist.progress_at > FETCH_STALL:
                dist.source, dist.progress_at = dist.waiters.pop(), now
                peer_log.warning("workspace %s: its source sent nothing for %.0f s; asking "
                                 "another Main for it", dist_id[:12], FETCH_STALL)
                self._ask(dist_id, dist)

    def _recheck(self, now: float) -> None:
        """Check the ready trees that tasks use (a stat of each file): one that drifted while
        its Mains' runs use it is dropped (its running tasks go back to their queue) and
        fetched and built again from a Main whose tasks wait for it."""
        started = time.monotonic()
        for dist_id in sorted(self._active()):
            dist = self._dists.get(dist_id)
            if dist is None or dist.state is not DistState.READY:
                continue
            if self.store.ensure_whole(dist_id, dist.entries, lambda: self._replaced(dist_id)):
                del self._dists[dist_id]
                peer = self._wanted_by(dist_id)
                if peer is not None:
                    self.request(dist_id, peer)
        self._recheck_at = now + max(RECHECK_EVERY, 100 * (time.monotonic() - started))

    def _ask(self, dist_id: str, dist: Dist) -> None:
        assert dist.source is not None
        if dist.state is DistState.MANIFEST:
            self._send(dist.source, m.NeedManifest(dist_id))
            return
        missing = sorted(dist.waiting_blobs)
        for i in range(0, len(missing), NEED_BLOBS_COUNT):
            self._send(dist.source, m.NeedBlobs(dist_id, missing[i:i + NEED_BLOBS_COUNT]))

    def on_manifest(self, msg: m.Manifest) -> Change:
        dist = self._dists.get(msg.dist)
        if dist is None or dist.state is not DistState.MANIFEST:
            return None
        try:
            dist.main, dist.entries, dist.folders = decode_manifest(
                bytes(_bytes(msg.frames[0])), msg.dist)
        except WorkspaceError as exc:
            return self._fail(msg.dist, ErrorRecord.of(exc, False).to_wire())
        self.store.ensure_whole(msg.dist, dist.entries)  # a tree left from an earlier daemon
        missing = self.store.missing(dist.entries)
        if not missing:
            return self._materialize(msg.dist, dist)
        dist.state, dist.waiting_blobs = DistState.BLOBS, set(missing)
        dist.sizes = {e.digest: e.size for e in dist.entries}
        dist.progress_at = time.monotonic()
        self._ask(msg.dist, dist)
        return None

    def on_blobs(self, msg: m.Blobs) -> Change:
        dist = self._dists.get(msg.dist)
        if dist is None or dist.state is not DistState.BLOBS:
            return None
        for digest, frame in zip(msg.hashes, msg.frames):
            if digest not in dist.waiting_blobs:
                peer_log.warning("dropped unrequested blob %s", digest[:12])
                continue
            try:
                self.store.put_compressed(digest, _bytes(frame), dist.sizes[digest])
            except WorkspaceError as exc:
                return self._fail(msg.dist, ErrorRecord.of(exc, False).to_wire())
            dist.waiting_blobs.discard(digest)
            dist.progress_at = time.monotonic()
            self.blobs_received += 1
        return None if dist.waiting_blobs else self._materialize(msg.dist, dist)

    def on_failed(self, peer: bytes, msg: m.DistFailed) -> Change:
        """A Main cannot provide a distribution: heard only from the one it is fetched from."""
        dist = self._dists.get(msg.dist)
        if dist is None or dist.state is DistState.READY or dist.source != peer:
            peer_log.warning("ignored DistFailed for environment %s from a Main it is not "
                             "fetched from", msg.dist[:12])
            return None
        return self._fail(msg.dist, ErrorRecord("distrib.WorkspaceError", msg.reason).to_wire())

    def _fail(self, dist_id: str, info: dict[str, str]) -> Failed:
        """This attempt failed: forgotten, so a later submit starts over; a waiting Main (if
        any) fetches it at once."""
        peer_log.warning("workspace %s failed: %s", dist_id[:12], info.get("message"))
        dist = self._dists.pop(dist_id)
        if dist.waiters:
            self.request(dist_id, dist.waiters.pop()).waiters |= dist.waiters
        return Failed(dist_id, dist.source, info)

    def source_left(self, peer: bytes, other_source: Callable[[str], bytes | None]) -> None:
        """``peer`` left: fetch what it was providing again from ``other_source(dist)``."""
        for dist_id, dist in list(self._dists.items()):
            dist.waiters.discard(peer)
            if dist.source == peer and dist.state in (DistState.MANIFEST, DistState.BLOBS):
                del self._dists[dist_id]
                other = other_source(dist_id)
                if other is not None:
                    self.request(dist_id, other).waiters |= dist.waiters - {other}

    def _materialize(self, dist_id: str, dist: Dist) -> Change:
        try:
            dist.env = self.store.materialize(dist_id, dist.entries, dist.main, dist.imports,
                                              dist.folders)
        except (WorkspaceError, OSError) as exc:
            return self._fail(dist_id, ErrorRecord.of(exc, False).to_wire())
        dist.state = DistState.READY
        # (the store's size is kept at the next tick: its walk took 0.1 s of a lingering
        # daemon's cache of twenty edits' trees, before the run's executors could start)
        self._built.add(dist_id)
        peer_log.info("workspace %s ready (%d files)", dist_id[:12], len(dist.entries))
        return Ready(dist_id)


def _bytes(frame: Any) -> bytes | memoryview:
    data: bytes | memoryview = frame.buffer if hasattr(frame, "buffer") else frame
    return data

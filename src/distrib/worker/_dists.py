"""The distributions a worker fetches from its Mains and builds into environment trees.

    unknown --submit--> MANIFEST --Manifest--> BLOBS --Blobs (all)--> READY
                           |                     |
                           +-----> FAILED <------+   (bad manifest or blob, DistFailed, build)

A distribution is fetched from one Main (its *source*); if that Main leaves mid-fetch, another
Main with tasks for it becomes the source. Sending goes through the ``send`` callable the daemon
gives; nothing here touches a socket.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distrib._errors import WorkspaceError
from distrib._logs import RateLimited
from distrib.wire import _messages as m
from distrib.wire._limits import NEED_BLOBS_COUNT
from distrib.wire._record import ErrorRecord
from distrib.workspace._manifest import Entry, decode_manifest
from distrib.workspace._store import Store

log = logging.getLogger("distrib.worker")
peer_log = RateLimited(log)  # for what a remote peer (or task code) can trigger

Sender = Callable[[bytes, m.Message], None]


class DistState(enum.Enum):
    MANIFEST = "manifest"  # asked the source for the manifest
    BLOBS = "blobs"  # asked the source for the blobs the store lacks
    READY = "ready"  # the environment tree is built
    FAILED = "failed"  # fetching or building failed; ``error`` says why


@dataclass(eq=False)
class Dist:
    """What the daemon knows of one distribution."""

    state: DistState
    source: bytes | None = None  # the Main it is fetched from
    main: str | None = None  # the main script's path in the tree
    entries: list[Entry] = field(default_factory=list)
    waiting_blobs: set[str] = field(default_factory=set)
    env: Path | None = None
    error: tuple[dict[str, str], list[Any]] | None = None  # record and pickled exception
    users: set[bytes] = field(default_factory=set)  # Mains whose runs found it checked


@dataclass(frozen=True, slots=True)
class Ready:
    dist: str


@dataclass(frozen=True, slots=True)
class Failed:
    dist: str
    info: dict[str, str]
    frames: list[Any]


Change = Ready | Failed | None


class Distributions:
    """Every distribution this daemon has heard of, by id."""

    def __init__(self, store: Store, send: Sender, replaced: Callable[[str], None]) -> None:
        self.store = store
        self._send = send
        self._replaced = replaced  # told when a ready environment is dropped to be rebuilt
        self._dists: dict[str, Dist] = {}
        self.blobs_received = 0

    def get(self, dist_id: str) -> Dist | None:
        return self._dists.get(dist_id)

    def request(self, dist_id: str, peer: bytes) -> Dist:
        """A task of ``dist_id`` came from ``peer``: start fetching it if it is new.

        A ready environment is checked against how it was built the first time each Main
        uses it; one that drifted is dropped and fetched and built again."""
        dist = self._dists.get(dist_id)
        if dist is not None and dist.state is DistState.READY and peer not in dist.users:
            drifted = self.store.drift(dist_id)
            if drifted:
                log.warning("environment %s drifted from its manifest (%s); building it again "
                            "from the blob store", dist_id[:12], ", ".join(drifted[:10]))
                self._replaced(dist_id)  # its executors stop first
                self.store.discard(dist_id)
                del self._dists[dist_id]
                dist = None
            else:
                dist.users.add(peer)
        if dist is None:
            dist = self._dists[dist_id] = Dist(DistState.MANIFEST, source=peer, users={peer})
            self._send(peer, m.NeedManifest(dist_id))
        return dist

    def on_manifest(self, msg: m.Manifest) -> Change:
        dist = self._dists.get(msg.dist)
        if dist is None or dist.state is not DistState.MANIFEST:
            return None
        try:
            dist.main, dist.entries = decode_manifest(bytes(_bytes(msg.frames[0])), msg.dist)
        except WorkspaceError as exc:
            return self.fail(msg.dist, ErrorRecord.of(exc, False).to_wire(), [])
        missing = self.store.missing(dist.entries)
        if not missing:
            return self._materialize(msg.dist, dist)
        dist.state, dist.waiting_blobs = DistState.BLOBS, set(missing)
        if dist.source is not None:
            for i in range(0, len(missing), NEED_BLOBS_COUNT):
                self._send(dist.source, m.NeedBlobs(msg.dist, missing[i:i + NEED_BLOBS_COUNT]))
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
                self.store.put_compressed(digest, _bytes(frame))
            except WorkspaceError as exc:
                return self.fail(msg.dist, ErrorRecord.of(exc, False).to_wire(), [])
            dist.waiting_blobs.discard(digest)
            self.blobs_received += 1
        return None if dist.waiting_blobs else self._materialize(msg.dist, dist)

    def fail(self, dist_id: str, info: dict[str, str], frames: list[Any]) -> Failed:
        peer_log.warning("environment %s failed: %s", dist_id[:12], info.get("message"))
        dist = self._dists.setdefault(dist_id, Dist(DistState.FAILED))
        dist.state, dist.error = DistState.FAILED, (info, frames)
        return Failed(dist_id, info, frames)

    def source_left(self, peer: bytes, other_source: Callable[[str], bytes | None]) -> None:
        """``peer`` left: fetch what it was providing again from ``other_source(dist)``."""
        for dist_id, dist in list(self._dists.items()):
            if dist.source == peer and dist.state in (DistState.MANIFEST, DistState.BLOBS):
                del self._dists[dist_id]
                other = other_source(dist_id)
                if other is not None:
                    self.request(dist_id, other)

    def _materialize(self, dist_id: str, dist: Dist) -> Change:
        in_use = {d for d, x in self._dists.items() if x.state is DistState.READY}
        try:
            dist.env = self.store.materialize(dist_id, dist.entries, in_use)
        except (WorkspaceError, OSError) as exc:
            return self.fail(dist_id, ErrorRecord.of(exc, False).to_wire(), [])
        dist.state = DistState.READY
        peer_log.info("environment %s ready (%d files)", dist_id[:12], len(dist.entries))
        return Ready(dist_id)


def _bytes(frame: Any) -> bytes | memoryview:
    data: bytes | memoryview = frame.buffer if hasattr(frame, "buffer") else frame
    return data

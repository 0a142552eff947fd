"""Distributions belong to the Mains that sent them: a store on disk, messages captured."""

from __future__ import annotations

import hashlib
import os
import types
import zlib
from pathlib import Path

import pytest

from distrib.wire import _messages as m
from distrib.worker import _dists
from distrib.worker._dists import Distributions, DistState, Failed, Ready
from distrib.workspace._manifest import Entry, encode_manifest
from distrib.workspace._store import Store

A, B, EVIL = b"main-a", b"main-b", b"evil"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Distributions, list[tuple[bytes, m.Message]], str, bytes,
                                   list[bytes]]:
    sent: list[tuple[bytes, m.Message]] = []
    dists = Distributions(Store(tmp_path / "store"), lambda peer, msg: sent.append((peer, msg)),
                          lambda dist: None)
    raw = b"print('hi')\n"
    digest = hashlib.sha256(raw).hexdigest()
    manifest, dist_id = encode_manifest("main.py", [Entry("main.py", len(raw), False, digest)])
    return dists, sent, dist_id, manifest, [zlib.compress(raw)]


def fetched(dists: Distributions, peer: bytes, dist_id: str, manifest: bytes,
            blobs: list[bytes]) -> object:
    dists.on_manifest(m.Manifest(dist_id, frames=(manifest,)))
    need = dists.get(dist_id)
    assert need is not None and need.state is DistState.BLOBS
    return dists.on_blobs(m.Blobs(dist_id, sorted(need.waiting_blobs), frames=tuple(blobs)))


def test_only_the_source_can_fail_a_fetch_and_a_failure_is_not_kept(setup) -> None:
    dists, sent, dist_id, manifest, blobs = setup
    dists.request(dist_id, A)
    assert sent == [(A, m.NeedManifest(dist_id))]
    assert dists.on_failed(EVIL, m.DistFailed(dist_id, "ha")) is None  # not its fetch
    change = dists.on_failed(A, m.DistFailed(dist_id, "a file changed"))
    assert isinstance(change, Failed) and change.peer == A
    assert dists.get(dist_id) is None  # forgotten: the next submit starts over
    dists.request(dist_id, A)
    assert sent[-1] == (A, m.NeedManifest(dist_id))
    assert isinstance(fetched(dists, A, dist_id, manifest, blobs), Ready)


def test_a_failure_of_one_main_sends_the_others_to_fetch_it_themselves(setup) -> None:
    dists, sent, dist_id, manifest, blobs = setup
    dists.request(dist_id, A)
    dists.request(dist_id, B)  # waits for A's fetch
    change = dists.on_failed(A, m.DistFailed(dist_id, "a file changed"))
    assert isinstance(change, Failed) and change.peer == A
    assert sent[-1] == (B, m.NeedManifest(dist_id))
    assert isinstance(fetched(dists, B, dist_id, manifest, blobs), Ready)


def test_a_source_that_never_answers_is_replaced_by_a_waiting_main(setup) -> None:
    dists, sent, dist_id, manifest, blobs = setup
    dists.request(dist_id, EVIL)  # claims the id, will never send the manifest
    dists.request(dist_id, B)
    dist = dists.get(dist_id)
    assert dist is not None
    dists.tick(dist.progress_at + _dists.FETCH_STALL / 2)
    assert sent == [(EVIL, m.NeedManifest(dist_id))]  # not stalled yet
    dists.tick(dist.progress_at + _dists.FETCH_STALL * 2)
    assert sent[-1] == (B, m.NeedManifest(dist_id))
    assert isinstance(fetched(dists, B, dist_id, manifest, blobs), Ready)


def test_a_worker_ships_a_distribution_it_holds_to_another_from_its_store(
        setup, tmp_path: Path) -> None:
    """(A worker sending a call directly to one that lacks the workspace: ``_direct``.)"""
    from distrib.worker._direct import Direct, Target

    dists, _, dist_id, manifest, blobs = setup
    dists.request(dist_id, A)
    assert isinstance(fetched(dists, A, dist_id, manifest, blobs), Ready)
    shipped: list[m.Message] = []

    class Captured(Target):
        def send(self, message: m.Message) -> None:
            shipped.append(message)

    class Host:  # (only what shipping asks of the worker; anything else is a mistake)
        workspace = dist_id  # the Main's Hello names the workspace of its calls

        def hello(self, main: bytes) -> object:
            return types.SimpleNamespace(dist=self.workspace)

        def manifest(self, dist: str) -> bytes | None:
            return dists.manifest(dist)

        def blob(self, dist: str, digest: str) -> bytes | None:
            return dists.blob(dist, digest)

        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"not for shipping: {name}")

    host = Host()
    direct = Direct("w1", None, None, 10.0, host)  # type: ignore[arg-type]
    target = Captured(address="10.0.0.3:7070", endpoint="", ctx=None,  # type: ignore[arg-type]
                      server_key="k", name="w2")
    other = Distributions(Store(tmp_path / "other"), lambda peer, msg: shipped.append(msg),
                          lambda dist: None)
    other.request(dist_id, b"w1")
    direct._on_message(b"main", target, shipped.pop(), 0.0)  # its NeedManifest
    assert other.on_manifest(shipped.pop()) is None  # (then it asks for the files)
    direct._on_message(b"main", target, shipped.pop(), 0.0)  # its NeedBlobs
    assert isinstance(other.on_blobs(shipped.pop()), Ready)
    assert (other.store.envs / dist_id / "main.py").read_bytes() == b"print('hi')\n"
    # What it does not hold, or is not the workspace of that Main's calls, it does not send.
    direct._on_message(b"main", target, m.NeedManifest("ab" * 32), 0.0)
    assert isinstance(shipped.pop(), m.DistFailed)
    host.workspace = "cd" * 32  # (another workspace)
    direct._on_message(b"main", target, m.NeedManifest(dist_id), 0.0)
    assert isinstance(shipped.pop(), m.DistFailed)
    host.workspace = dist_id
    direct._on_message(b"main", target, m.NeedBlobs(dist_id, ["cd" * 32]), 0.0)
    assert isinstance(shipped.pop(), m.DistFailed)


def test_the_store_is_kept_under_its_size_at_the_tick_after_a_tree_is_built(
        tmp_path: Path) -> None:
    # (its walk of the whole store must not hold back the new tree's first tasks)
    store = Store(tmp_path / "store", max_bytes=1)  # (any tree is over)
    dists = Distributions(store, lambda peer, msg: None, lambda dist: None)
    ids = []
    for text in (b"old = 1\n", b"new = 2\n"):
        digest = hashlib.sha256(text).hexdigest()
        manifest, dist_id = encode_manifest("main.py", [Entry("main.py", len(text), False,
                                                              digest)])
        dists.request(dist_id, A)
        assert isinstance(fetched(dists, A, dist_id, manifest, [zlib.compress(text)]), Ready)
        ids.append(dist_id)
        if len(ids) == 1:
            dists.tick(0.0)  # (the tree just built is kept)
    old, new = (store.env_path(i) for i in ids)
    assert old.is_dir() and new.is_dir()  # (the new one built: nothing evicted yet)
    dists.tick(0.0)
    assert not old.exists() and new.is_dir()  # (the older goes; the one just built stays)
    assert dists.get(ids[0]) is None


def test_blobs_that_hardly_compress_are_stored_as_they_are_and_all_arrive_whole(
        tmp_path: Path) -> None:
    from distrib.wire._payload import blob_batches

    blobs = {"random": os.urandom(3 << 20), "text": b"a line of text\n" * 200_000,
             "small": os.urandom(1000)}
    by_hash = {hashlib.sha256(data).hexdigest(): data for data in blobs.values()}
    [message] = blob_batches("d", list(by_hash), by_hash.__getitem__)
    assert isinstance(message, m.Blobs)
    sent = dict(zip(message.hashes, message.frames))
    sizes = {name: len(sent[hashlib.sha256(data).hexdigest()]) for name, data in blobs.items()}
    # Stored (zlib level 0: 5 bytes a block of 64 KiB), not compressed for nothing (level 1
    # makes it about 1,000 bytes larger than it is, at a thirtieth of the speed).
    assert (3 << 20) < sizes["random"] < (3 << 20) + 400
    assert sizes["text"] < 100_000
    store = Store(tmp_path / "store")
    for digest, frame in sent.items():
        store.put_compressed(digest, frame, len(by_hash[digest]))
        assert store.blob_path(digest).read_bytes() == by_hash[digest]

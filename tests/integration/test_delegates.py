"""A worker takes calls sent for a Main by another worker only from a key that Main names
(its ``Peers``): an authorized Main cannot claim another's account by saying it sends for it.
Built by hand from the project's codec, as a hostile peer would be."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from distrib.wire import _codec, _facts, _keys, _transport
from distrib.wire import _messages as m
from distrib.wire._envspec import EnvSpec
from tests.helpers import Worker, query_status


def _hello(main_id: str, delegate: str = "") -> m.Hello:
    return m.Hello(m.PROTOCOL_VERSION, main_id, f"raw {main_id}", _facts.python_version(),
                   os.getpid(), False, [], {}, EnvSpec(_facts.python_version()).encode(),
                   1 << 20, [], 0, [], "", 0, "auto", delegate)


def _answer(sock: zmq.Socket[Any], kind: type[m.Message] | tuple[type[m.Message], ...]
            ) -> m.Message:
    """The next message of ``kind`` (heartbeats and the like skipped), within a deadline."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    for _ in range(200):
        if not poller.poll(30_000):
            raise AssertionError(f"no {kind} within 30 s")
        message = _codec.decode(sock.recv_multipart(copy=False))
        if isinstance(message, kind):
            return message
    raise AssertionError(f"no {kind} among 200 messages")


def test_a_worker_takes_calls_for_a_main_only_from_a_key_that_main_names(
        start_worker: Callable[..., Worker], tmp_path: Path) -> None:
    honest, hostile, helper = _keys.generate(), _keys.generate(), _keys.generate()
    _keys.write(tmp_path / "worker.key", _keys.generate())
    (tmp_path / "authorized").write_text(f"{honest.public} honest slots=1\n"
                                         f"{hostile.public} other\n{helper.public} a worker\n")
    worker = start_worker(threads=2, extra=("--key", str(tmp_path / "worker.key"),
                                            "--authorized-keys", str(tmp_path / "authorized")))
    ctx: zmq.Context[Any] = zmq.Context()
    other = _transport.dealer(ctx, worker.address, worker.public_key, hostile)
    main = _transport.dealer(ctx, worker.address, worker.public_key, honest)
    delegate = _transport.dealer(ctx, worker.address, worker.public_key, helper)
    try:
        # An authorized Main that takes the honest Main's id (it is no secret) and names the
        # helper's key, with garbage among its peers (dropped: the daemon serves on).
        other.send_multipart(_codec.encode(_hello("honest-main")))
        assert isinstance(_answer(other, m.Welcome), m.Welcome)
        other.send_multipart(_codec.encode(m.Peers([
            ["foo", "x", "bad", 1], ["127.0.0.1:9", "short", "bad", 1],
            ["127.0.0.1:9", helper.public, "w9", True], ["10.0.0.9:7070", helper.public, "w9", 2]])))
        main.send_multipart(_codec.encode(_hello("honest-main")))
        assert isinstance(_answer(main, m.Welcome), m.Welcome)
        # The helper says it sends for the honest Main, which does not name it: refused
        # (the other Main's word does not count for the honest one's account).
        delegate.send_multipart(_codec.encode(_hello("honest-main", delegate=honest.public)))
        refused = _answer(delegate, m.Refused)
        assert isinstance(refused, m.Refused)
        assert refused.code is m.RefusalCode.NOT_DELEGATE
        assert "does not name its key" in refused.reason
        status = query_status(worker.address, server_key=worker.public_key, key=honest)
        assert status["direct_targets"] == ["w9: new"]  # (the other Main's one good peer)
        # Once the honest Main names that key among its workers, it is taken...
        main.send_multipart(_codec.encode(m.Peers([["127.0.0.1:9", helper.public, "w9", 1]])))
        for _ in range(100):  # (the two connections are read in any order: say it again)
            delegate.send_multipart(_codec.encode(_hello("honest-main",
                                                         delegate=honest.public)))
            welcome = _answer(delegate, (m.Welcome, m.Refused))
            if isinstance(welcome, m.Welcome):
                break
        assert isinstance(welcome, m.Welcome)
        assert welcome.slots == 1  # (the Main's quota: its calls count under it)
        # ...and dropped when the Main no longer names it.
        main.send_multipart(_codec.encode(m.Peers([])))
        dropped = _answer(delegate, m.Refused)
        assert isinstance(dropped, m.Refused)
        assert dropped.code is m.RefusalCode.NOT_DELEGATE
        # A Main's own calls cannot use the ids workers give the calls they take.
        main.send_multipart(_codec.encode(m.Submit([m.TaskSpec(
            1 << 48, "ab" * 32, 1, None, 0, [b"x"], 0)])))
        results = _answer(main, m.Results)
        assert isinstance(results, m.Results)
        assert results.results[0].status is m.Outcome.ERROR
        assert "below" in results.results[0].info["message"]
    finally:
        for sock in (main, other, delegate):
            sock.close(0)
        ctx.term()
    assert "its Main does not name its key" in worker.log()


def test_a_worker_fetches_a_workspace_from_the_worker_that_sent_the_call(
        start_worker: Callable[..., Worker], tmp_path: Path) -> None:
    """The taking side of direct calls, end to end: a call for a workspace the worker lacks
    makes it ask the delegate (not the Main) for the manifest and files; the outcome goes to
    the delegate, under the id it gave."""
    import hashlib
    import operator
    import zlib

    from distrib import _serialize, distributed
    from distrib.workspace._manifest import Entry, encode_manifest

    honest, helper = _keys.generate(), _keys.generate()
    _keys.write(tmp_path / "worker.key", _keys.generate())
    (tmp_path / "authorized").write_text(f"{honest.public}\n{helper.public}\n")
    worker = start_worker(threads=1, extra=("--key", str(tmp_path / "worker.key"),
                                            "--authorized-keys", str(tmp_path / "authorized")))
    source = b"LOADED = True\n"
    digest = hashlib.sha256(source).hexdigest()
    manifest, dist = encode_manifest("main.py", [Entry("main.py", len(source), False, digest)])
    ctx: zmq.Context[Any] = zmq.Context()
    main = _transport.dealer(ctx, worker.address, worker.public_key, honest)
    delegate = _transport.dealer(ctx, worker.address, worker.public_key, helper)
    try:
        main.send_multipart(_codec.encode(_hello("m")))  # (its Hello names no workspace)
        assert isinstance(_answer(main, m.Welcome), m.Welcome)
        main.send_multipart(_codec.encode(m.Peers([["127.0.0.1:9", helper.public, "w9", 1]])))
        for _ in range(100):  # (the two connections are read in any order: say it again)
            delegate.send_multipart(_codec.encode(_hello("m", delegate=honest.public)))
            if isinstance(_answer(delegate, (m.Welcome, m.Refused)), m.Welcome):
                break
        add = distributed(operator.add)
        call = _serialize.dumps_call(add, add.named(), (20, 22), {})
        delegate.send_multipart(_codec.encode(m.Submit(
            [m.TaskSpec(77, dist, 1, None, 0, [bytes(f) for f in call], 0)])))
        need = _answer(delegate, m.NeedManifest)
        assert isinstance(need, m.NeedManifest) and need.dist == dist
        delegate.send_multipart(_codec.encode(m.Manifest(dist, frames=(manifest,))))
        blobs = _answer(delegate, m.NeedBlobs)
        assert isinstance(blobs, m.NeedBlobs) and blobs.hashes == [digest]
        delegate.send_multipart(_codec.encode(m.Blobs(dist, [digest],
                                                      frames=(zlib.compress(source),))))
        results = _answer(delegate, m.Results)
        assert isinstance(results, m.Results)
        (spec,) = results.results
        assert spec.task_id == 77 and spec.status is m.Outcome.OK, spec.info
        assert _serialize.loads(list(spec.inline)) == 42
    finally:
        for sock in (main, delegate):
            sock.close(0)
        ctx.term()

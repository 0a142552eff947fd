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
from tests.helpers import Worker


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
    honest, hostile = _keys.generate(), _keys.generate()
    _keys.write(tmp_path / "worker.key", _keys.generate())
    (tmp_path / "authorized").write_text(f"{honest.public} honest slots=1\n"
                                         f"{hostile.public} other\n")
    worker = start_worker(threads=2, extra=("--key", str(tmp_path / "worker.key"),
                                            "--authorized-keys", str(tmp_path / "authorized")))
    ctx: zmq.Context[Any] = zmq.Context()
    main = _transport.dealer(ctx, worker.address, worker.public_key, honest)
    other = _transport.dealer(ctx, worker.address, worker.public_key, hostile)
    try:
        main.send_multipart(_codec.encode(_hello("honest-main")))
        assert isinstance(_answer(main, m.Welcome), m.Welcome)
        # Authorized on the worker, but the Main does not name it: no account of the Main's.
        other.send_multipart(_codec.encode(_hello("other", delegate="honest-main")))
        refused = _answer(other, m.Refused)
        assert isinstance(refused, m.Refused)
        assert refused.code is m.RefusalCode.NOT_DELEGATE
        assert "does not name its key" in refused.reason
        # Once the Main names that key among its workers, it is taken...
        main.send_multipart(_codec.encode(m.Peers([["127.0.0.1:9", hostile.public, "w9", 1]])))
        for _ in range(100):  # (the two connections are read in any order: say it again)
            other.send_multipart(_codec.encode(_hello("other", delegate="honest-main")))
            welcome = _answer(other, (m.Welcome, m.Refused))
            if isinstance(welcome, m.Welcome):
                break
        assert isinstance(welcome, m.Welcome)
        assert welcome.slots == 1  # (the Main's quota: its calls count under it)
        # ...and dropped when the Main no longer names it.
        main.send_multipart(_codec.encode(m.Peers([])))
        dropped = _answer(other, m.Refused)
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
        main.close(0)
        other.close(0)
        ctx.term()
    assert "refused calls from raw other: its Main does not name its key" in worker.log()

"""One link life cycle (``wire/_link``): what a tick does under a policy, and the states a link
goes through, with no worker at the other end."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
import zmq

from distrib.wire import _messages as m
from distrib.wire._link import Link, LinkCheck, LinkPolicy, LinkState, MonitorEvent, check

MAIN = LinkPolicy(lost_after=10.0, retry_after=2.0, auth_retry_after=10.0)
WORKER = LinkPolicy(lost_after=10.0, retry_after=3.0, auth_retry_after=3.0,
                    lose_connecting=True)


def test_a_new_link_connects_at_once_under_any_policy() -> None:
    for policy in (MAIN, WORKER):
        assert check(LinkState.NEW, 0.0, 0.0, 0.0, policy) is LinkCheck.CONNECT


def test_a_connecting_link_is_lost_after_silence_only_when_the_policy_says_so() -> None:
    connecting = LinkState.CONNECTING
    assert check(connecting, 0.0, 0.0, 1.0, WORKER) is LinkCheck.HEARTBEAT
    assert check(connecting, 0.0, 0.0, 10.5, WORKER) is LinkCheck.LOSE
    assert check(connecting, 0.0, 0.0, 10.5, MAIN) is LinkCheck.SLOW
    assert check(connecting, 0.0, 0.0, 1.0, MAIN) is LinkCheck.WAIT


@pytest.mark.parametrize(("state", "after"), [(LinkState.LOST, 3.0), (LinkState.REFUSED, 3.0),
                                              (LinkState.AUTH_FAILED, 3.0)])
def test_each_policy_sets_its_own_waits_before_trying_again(state: LinkState,
                                                            after: float) -> None:
    assert check(state, 0.0, 0.0, after, WORKER) is LinkCheck.WAIT
    assert check(state, 0.0, 0.0, after + 0.1, WORKER) is LinkCheck.CONNECT


@pytest.fixture
def ctx() -> Any:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.term()


def test_a_link_connects_goes_down_and_connects_again(ctx: zmq.Context[Any]) -> None:
    link = Link(address="127.0.0.1:9", endpoint="tcp://127.0.0.1:9", ctx=ctx)
    assert link.state is LinkState.NEW and link.sock is None
    hello = m.Hello(m.PROTOCOL_VERSION, "00", "test", "3.12", 1, False, [], {}, b"", 1 << 20,
                    [], 0, [], "", 1, "auto")
    link.connect(5.0, hello)  # (nothing answers there: the Hello waits in the socket)
    assert (link.state, link.since, link.last_seen) == (LinkState.CONNECTING, 5.0, 5.0)
    assert link.sock is not None and link.monitor is not None
    assert link.check(5.0 + 6, MAIN) is LinkCheck.SLOW
    link.down(LinkState.LOST, 20.0, "was silent for 10 s")
    assert (link.state, link.since, link.reason) == (LinkState.LOST, 20.0, "was silent for 10 s")
    assert link.sock is None and link.monitor is None
    link.send(m.Heartbeat())  # (a link that is down drops what it is given)
    assert link.check(21.0, MAIN) is LinkCheck.WAIT
    assert link.check(22.5, MAIN) is LinkCheck.CONNECT
    link.connect(22.5, hello)
    assert link.state is LinkState.CONNECTING
    link.close()


def test_each_piece_carried_ahead_counts_as_hearing_from_the_worker(
        ctx: zmq.Context[Any]) -> None:
    from distrib.wire import _codec, _transport

    router, address = _transport.router(ctx, "tcp://127.0.0.1:0")
    link = Link(address=address, endpoint=address, ctx=ctx)
    hello = m.Hello(m.PROTOCOL_VERSION, "00", "test", "3.12", 1, False, [], {}, b"", 1 << 20,
                    [], 0, [], "", 1, "auto")
    try:
        link.connect(1.0, hello)
        assert router.poll(30_000)
        peer = router.recv_multipart()[0]
        result = bytes(range(256)) * 10_000  # 2.5 MB: three pieces under a 1 MiB limit
        _transport.send(router, m.Results([m.ResultSpec(1, m.Outcome.OK, {}, [], 1)],
                                          frames=(result,)), peer, max_frame=1 << 20)
        assert link.sock is not None
        seen = []
        for now in (2.0, 3.0, 4.0, 5.0):
            assert link.sock.poll(30_000)
            frames = link.receive(now)
            seen.append(link.last_seen)
            if frames is not None:
                assert bytes(_codec.decode(frames).frames[0]) == result
                break
        assert seen == [2.0, 3.0, 4.0, 4.0]  # three carried ahead, then the message itself
    finally:
        link.close()
        router.close(0)


def _hello() -> m.Hello:
    return m.Hello(m.PROTOCOL_VERSION, "00", "test", "3.12", 1, False, [], {}, b"", 1 << 20,
                   [], 0, [], "", 1, "auto")


def _first_failure(link: Link) -> MonitorEvent:
    """The link's first event other than its connection coming up."""
    assert link.monitor is not None
    while True:
        assert link.monitor.poll(60_000), "no event from the link"
        event = link.event()
        if event is not MonitorEvent.CONNECTED:
            return event


def test_a_worker_that_takes_the_connection_and_never_answers_is_a_handshake_timeout(
        ctx: zmq.Context[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # (a frozen worker: the kernel takes the connection, nothing answers) A timeout is not a
    # key the worker failed to prove, as it was reported before.
    from distrib.wire import _keys, _transport

    common = _transport._common

    def quick(sock: zmq.Socket[Any]) -> None:  # (libzmq's 30 s, as 0.6 s)
        common(sock)
        sock.setsockopt(zmq.HANDSHAKE_IVL, 600)

    monkeypatch.setattr(_transport, "_common", quick)
    frozen = socket.create_server(("127.0.0.1", 0))
    address = f"tcp://127.0.0.1:{frozen.getsockname()[1]}"
    link = Link(address=address, endpoint=address, ctx=ctx,
                server_key=_keys.generate().public)
    # Other links of the same Main try a worker that is down, as libzmq's I/O thread, shared
    # by them all, handles the handshake: the error code it reports is then theirs, not ours.
    closed = socket.create_server(("127.0.0.1", 0))
    down = f"tcp://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    others = [_transport.dealer(ctx, down) for _ in range(3)]
    try:
        for _ in range(3):
            link.connect(time.monotonic(), _hello())
            assert _first_failure(link) is MonitorEvent.HANDSHAKE_TIMEOUT
        assert link.handshake_seconds() == pytest.approx(0.6)
    finally:
        link.close()
        frozen.close()
        for sock in others:
            sock.close(0)


def test_a_worker_that_does_not_hold_the_key_named_fails_at_once_not_as_a_timeout(
        ctx: zmq.Context[Any]) -> None:
    from distrib.wire import _keys, _transport

    worker = _keys.generate()
    router, address = _transport.router(ctx, "tcp://127.0.0.1:0", key=worker)
    link = Link(address=address, endpoint=address, ctx=ctx,
                server_key=_keys.generate().public)  # (another key than the worker's)
    try:
        link.connect(time.monotonic(), _hello())
        assert _first_failure(link) is MonitorEvent.KEY_UNPROVEN
    finally:
        link.close()
        router.close(0)

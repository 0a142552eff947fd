"""This worker's links to other workers of a Main (``worker/_direct``): the wire's one link life
cycle, under the worker's policy, driven by the calls placed; no worker at the other end."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq

from distrib.wire import _keys
from distrib.wire import _messages as m
from distrib.wire._link import LinkState
from distrib.worker._direct import RETRY_AFTER, Direct
from distrib.worker._placement import Effect, Here, PlacedCall, Relay, Tell

MAIN = b"main"


class Host:
    """A worker that lends nothing (every call looks for another worker or the Main)."""

    def __init__(self) -> None:
        self.said: object = None  # the Main's Hello as its delegate says it
        self.effects: list[Effect] = []

    def hello(self, main: bytes) -> Any:
        return self.said

    def here(self, main: bytes, threads: int) -> Here:
        return Here("linux-x86_64", lends=False, load=0.0)

    def runs(self, ex_id: int, run_id: int) -> bool:
        return True

    def running_here(self, cid: int) -> bool:
        return False

    def manifest(self, dist: str) -> bytes | None:
        return None

    def blob(self, dist: str, digest: str) -> bytes | None:
        return None

    def apply_effects(self, effects: Sequence[Effect]) -> None:
        self.effects.extend(effects)


def call(cid: int, retries: int = 0) -> PlacedCall:
    return PlacedCall(cid, MAIN, 1, 2, 3, cid, "leaf", f"3.{cid}", "called by root#3", ("*",),
                      1, retries, None, "d" * 64, 1, [b"payload"])


def test_a_link_that_zmq_refuses_is_refused_and_tried_again_after_the_retry_time() -> None:
    host = Host()
    ctx = zmq.Context()
    direct = Direct("w1", ctx, _keys.generate(), 10.0, host)
    try:
        direct.set_peers(MAIN, [["not-an-address", _keys.generate().public, "w2", 2]], 0.0)
        (target,) = direct.targets.values()
        assert direct.status()["direct_targets"] == ["w2: new"]
        # While the Main is not served here (no Hello to say), nothing connects.
        assert not direct.place(call(1), 1.0)
        assert target.state is LinkState.NEW
        host.said = object()
        assert not direct.place(call(2), 2.0)  # (its Main's: nothing takes it from here)
        assert (target.state, target.since) == (LinkState.REFUSED, 2.0)
        assert target.reason.startswith("cannot be reached: worker address 'not-an-address'")
        assert direct.status()["direct_targets"] == ["w2: refused"]
        direct.place(call(3), 2.0 + RETRY_AFTER)
        assert target.since == 2.0  # (not yet)
        direct.place(call(4), 2.5 + RETRY_AFTER)
        assert (target.state, target.since) == (LinkState.REFUSED, 2.5 + RETRY_AFTER)
        assert direct.children == {} and host.effects == []
    finally:
        direct.close()
        ctx.term()


def test_a_silent_link_is_lost_and_its_calls_are_placed_again() -> None:
    host = Host()
    ctx = zmq.Context()
    direct = Direct("w1", ctx, _keys.generate(), 10.0, host)
    try:
        direct.set_peers(MAIN, [["127.0.0.1:9", _keys.generate().public, "w2", 2]], 0.0)
        (target,) = direct.targets.values()
        target.state, target.since, target.last_seen, target.offered = (
            LinkState.READY, 0.0, 0.0, 2)
        target.platform = "linux-x86_64"
        child = call(1, retries=1)
        assert direct.place(child, 1.0)  # (sent there: nothing to send it on, no socket)
        assert child.at == "127.0.0.1:9" and not child.later
        (placed,) = host.effects
        assert isinstance(placed, Tell) and placed.message == m.Placed(3, 1, "leaf", "w2")
        direct.tick(5.0, stuck_here=False)
        assert target.state is LinkState.READY
        direct.tick(10.5, stuck_here=False)
        assert (target.state, target.reason) == (LinkState.LOST, "was silent for 10 s")
        # It may have run there: one attempt of its two. Nowhere else takes it: its Main.
        assert child.attempts == 1 and host.effects[1:] == [Relay(child)]
        assert direct.children == {}
    finally:
        direct.close()
        ctx.term()


def test_only_the_links_of_mains_that_place_calls_here_are_watched() -> None:
    # Ten Mains of fifty workers name 490 links here; while none places a call, a tick and
    # the loop's poll have none to watch (their cost grew with Mains x workers).
    host = Host()
    ctx = zmq.Context()
    direct = Direct("w1", ctx, _keys.generate(), 10.0, host)
    try:
        key = _keys.generate().public
        peers = [[f"127.0.0.1:{9000 + i}", key, f"w{i}", 1] for i in range(49)]
        for i in range(10):
            direct.set_peers(bytes([i]), peers, 0.0)
        assert len(direct.targets) == 490
        assert direct.sockets() == [] and direct.placing == set()
        direct.tick(20.0, stuck_here=False)
        assert {t.state for t in direct.targets.values()} == {LinkState.NEW}
        # A Main's call placed here: its links (and only its) are watched from then on.
        first = direct.links[bytes([3])]["127.0.0.1:9000"]
        first.state, first.since, first.last_seen = LinkState.READY, 20.0, 20.0
        child = call(1)
        child.main = bytes([3])
        direct.place(child, 20.0)
        assert direct.placing == {bytes([3])}
        direct.tick(31.0, stuck_here=False)
        assert (first.state, first.reason) == (LinkState.LOST, "was silent for 10 s")
        # Its Main left: its links go, the others' stay.
        direct.main_left(bytes([3]))
        assert len(direct.targets) == 441 and direct.placing == set()
        direct.set_peers(bytes([0]), peers[:10], 40.0)
        assert len(direct.links[bytes([0])]) == 10 and len(direct.targets) == 402
    finally:
        direct.close()
        ctx.term()

"""The Main's health checks and its links' timers, driven with plain values: states, times,
reasons."""

from __future__ import annotations

import pytest

from distrib.main._health import (
    AUTH_RETRY_AFTER,
    PUBLISH_EVERY,
    RECONNECT_AFTER,
    all_refuse_keys,
    link_policy,
    no_environment,
    publish_due,
    warn_unmatched,
)
from distrib.wire._link import LinkCheck, LinkState, check

POLICY = link_policy(lost_after=10.0)


def test_a_ready_link_gets_heartbeats_until_it_is_silent_longer_than_lost_after() -> None:
    ready = LinkState.READY
    assert check(ready, since=0.0, last_seen=100.0, now=100.0, policy=POLICY) \
        is LinkCheck.HEARTBEAT
    assert check(ready, 0.0, 100.0, 110.0, POLICY) is LinkCheck.HEARTBEAT  # (exactly: not)
    assert check(ready, 0.0, 100.0, 110.5, POLICY) is LinkCheck.LOSE
    assert check(ready, 0.0, 100.0, 110.5, link_policy(lost_after=30.0)) \
        is LinkCheck.HEARTBEAT


@pytest.mark.parametrize("state", [LinkState.LOST, LinkState.REFUSED])
def test_a_lost_or_refusing_worker_is_tried_again_after_a_short_wait(state: LinkState) -> None:
    assert check(state, 50.0, 0.0, 50.0 + RECONNECT_AFTER, POLICY) is LinkCheck.WAIT
    assert check(state, 50.0, 0.0, 50.1 + RECONNECT_AFTER, POLICY) is LinkCheck.CONNECT
    # (its silence does not matter: no heartbeats go to a link that is down)
    assert check(state, 50.0, 0.0, 50.5, POLICY) is LinkCheck.WAIT


def test_a_worker_refusing_keys_is_tried_again_later_than_one_lost() -> None:
    failed = LinkState.AUTH_FAILED
    assert AUTH_RETRY_AFTER > RECONNECT_AFTER
    assert check(failed, 0.0, 0.0, RECONNECT_AFTER + 1, POLICY) is LinkCheck.WAIT
    assert check(failed, 0.0, 0.0, AUTH_RETRY_AFTER, POLICY) is LinkCheck.WAIT
    assert check(failed, 0.0, 0.0, AUTH_RETRY_AFTER + 0.1, POLICY) is LinkCheck.CONNECT


def test_a_link_still_connecting_is_slow_after_half_lost_after_and_never_lost() -> None:
    connecting = LinkState.CONNECTING
    assert check(connecting, 0.0, 0.0, 5.0, POLICY) is LinkCheck.WAIT
    assert check(connecting, 0.0, 0.0, 5.1, POLICY) is LinkCheck.SLOW
    assert check(connecting, 0.0, 0.0, 1000.0, POLICY) is LinkCheck.SLOW


def test_tasks_fail_for_keys_only_when_every_link_refuses_them() -> None:
    failed, ready = LinkState.AUTH_FAILED, LinkState.READY
    assert all_refuse_keys([failed, failed])
    assert not all_refuse_keys([failed, ready])
    assert not all_refuse_keys([])  # (discovery with no worker found yet: tasks wait)
    assert all_refuse_keys(iter([failed]))


def test_tasks_fail_for_the_environment_once_no_other_worker_is_on_its_way() -> None:
    unable = ["w0: no Python 3.99", "w1: cannot build numpy"]
    quiet = {"connecting": False, "discovering": False}
    assert no_environment(unable, 1.0, 0.0, 30.0, **quiet)
    assert not no_environment([], 100.0, 0.0, 30.0, **quiet)  # (no worker joined yet)
    assert not no_environment([unable[0], ""], 100.0, 0.0, 30.0, **quiet)  # (one can)
    # Another worker still connecting, or discovery on, within connect_timeout: wait.
    assert not no_environment(unable, 1.0, 0.0, 30.0, connecting=True, discovering=False)
    assert not no_environment(unable, 1.0, 0.0, 30.0, connecting=False, discovering=True)
    assert no_environment(unable, 30.0, 0.0, 30.0, connecting=True, discovering=True)


def test_unmatched_tasks_are_warned_of_once_workers_had_time_to_join() -> None:
    assert not warn_unmatched([], 10.0, 0.0, 30.0)  # (the first workers may still join)
    assert warn_unmatched([], 30.0, 0.0, 30.0)
    assert warn_unmatched([""], 1.0, 0.0, 30.0)  # (one joined: its offer is known)
    assert warn_unmatched(["", "w1: lacks numpy"], 1.0, 0.0, 30.0)
    # No worker can provide the environment: the tasks fail instead, saying why.
    assert not warn_unmatched(["w0: lacks numpy"], 100.0, 0.0, 30.0)


def test_the_dashboard_snapshot_is_published_at_most_every_half_second() -> None:
    assert publish_due(10.0, 0.0)
    assert not publish_due(10.0 + PUBLISH_EVERY / 2, 10.0)
    assert publish_due(10.0 + PUBLISH_EVERY, 10.0)

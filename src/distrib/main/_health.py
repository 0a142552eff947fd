"""Pure health checks of the Main: the facts and the time (``now``) in, a decision out.

The I/O thread (``_links``, ``_loop``) gathers the facts, asks here, and acts (logs, sends,
fails tasks); nothing here touches a socket, a clock or a logger, so tests drive it with plain
values.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from distrib.main._link import LinkState

RECONNECT_AFTER = 2.0  # seconds before a lost or refusing worker is tried again
AUTH_RETRY_AFTER = 10.0  # a refused key may be authorized later (workers reread their list)
PUBLISH_EVERY = 0.5  # seconds between the dashboard's snapshots


class LinkCheck(enum.Enum):
    """What a tick does to one link."""

    WAIT = "wait"  # nothing now
    HEARTBEAT = "heartbeat"  # ready and heard from lately: send a Heartbeat
    LOSE = "lose"  # ready and silent longer than ``lost_after``: declare it lost
    RECONNECT = "reconnect"  # refused, lost or refusing keys long enough: connect again
    SLOW = "slow"  # still connecting after half ``lost_after``: say so (once)


@dataclass(frozen=True)
class LinkTimers:
    """How long a link may be silent, and when one that failed is tried again."""

    lost_after: float  # a ready worker silent this long is lost (``[main] lost_after``)
    reconnect_after: float = RECONNECT_AFTER
    auth_retry_after: float = AUTH_RETRY_AFTER


def check_link(state: LinkState, since: float, last_seen: float, now: float,
               timers: LinkTimers) -> LinkCheck:
    """What a tick does to a link in ``state`` since ``since``, last heard at ``last_seen``."""
    if state is LinkState.READY:
        return LinkCheck.LOSE if now - last_seen > timers.lost_after else LinkCheck.HEARTBEAT
    if state in (LinkState.LOST, LinkState.REFUSED):
        return LinkCheck.RECONNECT if now - since > timers.reconnect_after else LinkCheck.WAIT
    if state is LinkState.AUTH_FAILED:
        return LinkCheck.RECONNECT if now - since > timers.auth_retry_after else LinkCheck.WAIT
    # A few seconds (half the time after which a silent worker counts as lost).
    return LinkCheck.SLOW if now - since > timers.lost_after / 2 else LinkCheck.WAIT


def all_refuse_keys(states: Iterable[LinkState]) -> bool:
    """Every link (there is one at least) refuses this Main's keys: tasks would wait forever."""
    states = list(states)
    return bool(states) and all(s is LinkState.AUTH_FAILED for s in states)


def no_environment(unable: Iterable[str], now: float, started: float, connect_timeout: float,
                   connecting: bool, discovering: bool) -> bool:
    """Every worker joined (there is one at least) said it cannot provide this Main's
    environment (``unable``: each one's reason, empty if it can), and no other is on its way
    (``connecting``, ``discovering``) within ``connect_timeout`` of the start."""
    unable = list(unable)
    if not unable or not all(unable):
        return False
    return not (now - started < connect_timeout and (connecting or discovering))


def warn_unmatched(unable: Iterable[str], now: float, started: float,
                   connect_timeout: float) -> bool:
    """Whether to warn of tasks no worker joined can take (``unable`` as above): not while
    the first workers may still join, nor when none can provide the environment (the tasks
    fail then, saying why)."""
    unable = list(unable)
    if not unable:
        return now - started >= connect_timeout
    return not all(unable)


def publish_due(now: float, published: float) -> bool:
    """The dashboard's snapshot is due (the last one was published at ``published``)."""
    return now - published >= PUBLISH_EVERY

"""Pure health checks of the Main: the facts and the time (``now``) in, a decision out.

The I/O thread (``_links``, ``_loop``) gathers the facts, asks here, and acts (logs, sends,
fails tasks); nothing here touches a socket, a clock or a logger, so tests drive it with plain
values. What a tick does to one link is the wire's ``check``, with the Main's ``link_policy``.
"""

from __future__ import annotations

from collections.abc import Iterable

from distrib.wire._link import LinkPolicy, LinkState

RECONNECT_AFTER = 2.0  # seconds before a lost or refusing worker is tried again
AUTH_RETRY_AFTER = 10.0  # a refused key may be authorized later (workers reread their list)
PUBLISH_EVERY = 0.5  # seconds between the dashboard's snapshots


def link_policy(lost_after: float) -> LinkPolicy:
    """The Main's timers for its links: a ready worker silent ``lost_after`` seconds is lost
    (one still connecting is only said to be slow), one lost or refusing is tried again soon,
    and one refusing this Main's key later."""
    return LinkPolicy(lost_after, RECONNECT_AFTER, AUTH_RETRY_AFTER)


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

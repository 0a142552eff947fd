"""Rate-limited log lines: what a remote peer can trigger cannot fill a disk."""

from __future__ import annotations

import logging

import pytest

from distrib._logs import RateLimited


def test_each_kind_of_line_is_limited_per_window_and_the_rest_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = logging.getLogger("distrib.test-logs")
    limited = RateLimited(log, burst=3, window=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="distrib.test-logs"):
        for i in range(1000):
            limited.warning("dropped garbage from %s: bad", i)
            limited.info("another kind %d", i)
        assert len(caplog.records) == 6
        now[0] = 61.0
        limited.warning("dropped garbage from %s: bad", "late")
    messages = [r.getMessage() for r in caplog.records]
    assert '(997 more like "dropped garbage from %s" in the last 61 s, not logged)' in messages
    assert messages[-1] == "dropped garbage from late: bad"

"""The ZAP check shared by distrib's CURVE servers: requests read, answers made, refusals
logged at most once a minute per key, with a bounded memory of keys."""

from __future__ import annotations

import pytest
from zmq.utils import z85

from distrib.wire import _zap


def _request(mechanism: bytes, key: bytes = b"") -> _zap.Request:
    frames = [b"1.0", b"7", b"", b"10.0.0.9", b"", mechanism]
    return _zap.Request(frames + ([key] if key else []))


def test_a_curve_request_names_its_key_and_is_answered_with_it() -> None:
    raw = bytes(range(32))
    request = _request(b"CURVE", raw)
    assert request.curve and request.key == z85.encode(raw).decode()
    assert request.address == "10.0.0.9"
    assert request.answer(True) == [b"1.0", b"7", b"200", b"OK", request.key.encode(), b""]
    assert request.answer(False)[2:4] == [b"400", b"key not authorized"]


def test_a_request_without_curve_has_no_key() -> None:
    request = _request(b"NULL")
    assert not request.curve and request.key == ""


def test_a_refused_key_is_due_once_a_minute_and_strangers_cannot_fill_the_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(_zap.time, "monotonic", lambda: clock[0])
    refusals = _zap.Refusals()
    assert refusals.due("k") and not refusals.due("k")
    clock[0] += _zap.REFUSAL_LOG_EVERY + 1
    assert refusals.due("k")
    for i in range(_zap.REFUSALS_KEPT * 3):  # a new made-up key at every try
        refusals.due(f"stranger{i}")
    assert len(refusals._logged) <= _zap.REFUSALS_KEPT

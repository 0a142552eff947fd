"""Response in every state, built without running anything."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from distrib import Cancelled, DistribError, Response, WaitTimeout, as_completed, gather


def test_result() -> None:
    r: Response[int] = Response(1, "f", None)
    assert not r.done() and not r.ok()
    r._finish("w", 5)
    assert r.unwrap() == 5 and r.ok() and r.error() is None and r.worker == "w"
    assert not r.cancel()


def test_error() -> None:
    r: Response[int] = Response(1, "f", None)
    r._finish("w", exc=KeyError("k"))
    with pytest.raises(KeyError):
        r.unwrap()
    assert isinstance(r.error(), KeyError) and not r.ok()


def test_cancel_calls_back_once_and_late_results_are_ignored() -> None:
    seen: list[int] = []
    r: Response[int] = Response(7, "f", seen.append)
    assert r.cancel() and r.cancel()
    assert seen == [7]
    r._finish("w", 1)  # arrives after the cancel: ignored
    with pytest.raises(Cancelled) as info:
        r.unwrap()
    assert isinstance(info.value, concurrent.futures.CancelledError)
    assert isinstance(info.value, DistribError)
    assert isinstance(r.error(), Cancelled) and not r.ok()


def test_wait_timeout() -> None:
    r: Response[int] = Response(1, "f", None)
    with pytest.raises(WaitTimeout):
        r.unwrap(timeout=0.01)
    assert not r.wait(0.01)


def test_helpers_and_await() -> None:
    rs: list[Response[int]] = [Response(i, "f", None) for i in range(3)]
    for i, r in enumerate(rs):
        r._finish("w", i * 10)
    assert gather(rs) == [0, 10, 20]
    assert sorted(r.unwrap() for r in as_completed(rs)) == [0, 10, 20]

    async def main() -> int:
        pending: Response[int] = Response(9, "f", None)
        asyncio.get_running_loop().call_later(0.01, pending._finish, "w", 99)
        return await pending

    assert asyncio.run(main()) == 99
    with pytest.raises(WaitTimeout):
        list(as_completed([Response(1, "f", None)], timeout=0.01))

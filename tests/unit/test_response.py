"""Response in every state, built without running anything."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from distrib import Cancelled, DistribError, Response, WaitTimeout, as_completed, gather


def test_result() -> None:
    r: Response[int] = Response(1, "f", None)
    assert not r.done() and not r.ok()
    r._set_outcome("w", 5)
    assert r.unwrap() == 5 and r.ok() and r.error() is None and r.worker == "w"
    assert not r.cancel()


def test_error() -> None:
    r: Response[int] = Response(1, "f", None)
    r._set_outcome("w", exc=KeyError("k"))
    with pytest.raises(KeyError):
        r.unwrap()
    assert isinstance(r.error(), KeyError) and not r.ok()


def test_cancel_calls_back_once_and_late_results_are_ignored() -> None:
    seen: list[int] = []
    r: Response[int] = Response(7, "f", seen.append)
    assert r.cancel() and r.cancel()
    assert seen == [7]
    r._set_outcome("w", 1)  # arrives after the cancel: ignored
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
        r._set_outcome("w", i * 10)
    assert gather(rs) == [0, 10, 20]
    assert sorted(r.unwrap() for r in as_completed(rs)) == [0, 10, 20]

    async def main() -> int:
        pending: Response[int] = Response(9, "f", None)
        asyncio.get_running_loop().call_later(0.01, pending._set_outcome, "w", 99)
        return await pending

    assert asyncio.run(main()) == 99
    with pytest.raises(WaitTimeout):
        list(as_completed([Response(1, "f", None)], timeout=0.01))


def test_a_response_nobody_waited_on_finishes_without_a_condition() -> None:
    r: Response[int] = Response(1, "f", None)
    r._set_outcome("w", 3)
    assert r._cond is None  # no Condition was ever built for it
    assert r.done() and r.unwrap() == 3


def test_a_waiter_in_another_thread_is_woken() -> None:
    import threading

    r: Response[int] = Response(1, "f", None)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(r.unwrap(timeout=60)))
    waiter.start()
    while r._cond is None:  # the waiter builds the Condition before it sleeps
        threading.Event().wait(0.001)
    r._set_outcome("w", 7)
    waiter.join(60)
    assert got == [7]


def test_callbacks_and_futures_wait_work_with_lazy_conditions() -> None:
    seen: list[object] = []
    early: Response[int] = Response(1, "f", None)
    early.add_done_callback(lambda f: seen.append(f.result()))
    done, pending = concurrent.futures.wait([early], timeout=0.01)
    assert not done and pending == {early}
    early._set_outcome("w", 1)
    late: Response[int] = Response(2, "f", None)
    late._set_outcome("w", 2)
    late.add_done_callback(lambda f: seen.append(f.result()))
    assert seen == [1, 2]
    done, _ = concurrent.futures.wait([early, late], timeout=1)
    assert done == {early, late}


def test_response_sets_every_field_future_has() -> None:
    # Response sets Future's private fields itself (see the top of distrib/_response.py):
    # a field a new Python adds to Future must be set there too.
    import concurrent.futures

    plain = set(vars(concurrent.futures.Future())) - {"_condition"}  # built lazily as _cond
    ours = set(vars(Response(1, "f", None)))
    assert plain <= ours, f"Future has fields Response does not set: {sorted(plain - ours)}"
    assert "_cond" in ours


def test_a_cancelled_response_counts_as_done_for_wait_and_as_completed() -> None:
    import concurrent.futures

    r: Response[int] = Response(3, "f", None)
    assert r.cancel()
    done, not_done = concurrent.futures.wait([r], timeout=5)
    assert done == {r} and not not_done
    assert list(concurrent.futures.as_completed([r], timeout=5)) == [r]
    assert r.wait(5)

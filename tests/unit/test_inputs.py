"""A ``Response`` passed as an argument stands for its value: ``distrib._inputs`` alone, with
the call made by a function that records it."""

from __future__ import annotations

from typing import Any

import pytest

from distrib import Cancelled, InputFailed
from distrib._inputs import call_when_ready, passes_responses
from distrib._response import Response
from tests.helpers import wait_for


class Calls:
    """Records each call made and returns a Response the test settles."""

    def __init__(self) -> None:
        self.made: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.responses: list[Response[Any]] = []

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Response[Any]:
        self.made.append((args, kwargs))
        response: Response[Any] = Response(100 + len(self.made), "add", None)
        self.responses.append(response)
        return response


def pending(task_id: int) -> Response[Any]:
    return Response(task_id, "f", None)


def test_only_top_level_responses_count() -> None:
    assert passes_responses((1, pending(1)), {})
    assert passes_responses((), {"b": pending(1)})
    assert not passes_responses(([pending(1)], 2), {"c": 3})


def test_the_call_is_made_with_the_values_once_every_input_finished() -> None:
    calls, a, b = Calls(), pending(1), pending(2)
    outer = call_when_ready("add", calls, (a, 5), {"b": b, "c": a})
    a._set_outcome("w", 10)
    assert calls.made == [] and not outer.done()
    b._set_outcome("w", 20)
    wait_for(lambda: calls.made, what="the call made (in the placing thread)")
    assert calls.made == [((10, 5), {"b": 20, "c": 10})]
    wait_for(lambda: outer.task_id == 101, what="the call named as made")
    calls.responses[0]._set_outcome("w2", 35)
    assert outer.unwrap(5) == 35 and outer.worker == "w2"


def test_inputs_already_finished_make_the_call_at_once() -> None:
    calls, a = Calls(), pending(1)
    a._set_outcome("w", 1)
    call_when_ready("add", calls, (a,), {})
    assert calls.made == [((1,), {})]


def test_a_failed_input_fails_the_call_with_it_as_cause_and_the_call_is_not_made() -> None:
    calls, a, b = Calls(), pending(1), pending(2)
    outer = call_when_ready("add", calls, (a, b), {})
    error = ValueError("bad input")
    b._set_outcome("w", exc=error)
    a._set_outcome("w", 1)
    outer.wait(30)
    with pytest.raises(InputFailed, match=r"argument 1 of add \(f#2\) failed: ValueError: "
                                          "bad input") as info:
        outer.unwrap(5)
    assert info.value.__cause__ is error and calls.made == []


def test_a_cancelled_input_fails_the_call() -> None:
    calls, a = Calls(), pending(1)
    outer = call_when_ready("add", calls, (a,), {})
    a.cancel()
    with pytest.raises(InputFailed) as info:
        outer.unwrap(5)
    assert isinstance(info.value.__cause__, Cancelled) and calls.made == []


def test_cancelling_before_the_inputs_finish_makes_no_call() -> None:
    calls, a = Calls(), pending(1)
    outer = call_when_ready("add", calls, (a,), {})
    assert outer.cancel()
    a._set_outcome("w", 1)
    assert calls.made == [] and outer.cancelled()


def test_cancelling_after_the_call_was_made_cancels_it() -> None:
    calls, a = Calls(), pending(1)
    outer = call_when_ready("add", calls, (a,), {})
    a._set_outcome("w", 1)
    wait_for(lambda: calls.responses, what="the call made")
    wait_for(lambda: outer.task_id == 101, what="the call's Response behind the caller's")
    assert outer.cancel()
    wait_for(lambda: calls.responses[0].cancelled(), what="the call made cancelled")


def test_a_call_that_raises_as_it_is_made_fails_the_response() -> None:
    def broken(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Response[Any]:
        raise TypeError("cannot pickle '_thread.lock' object")

    a = pending(1)
    outer = call_when_ready("add", broken, (a,), {})
    a._set_outcome("w", 1)
    with pytest.raises(TypeError, match="cannot pickle"):
        outer.unwrap(5)

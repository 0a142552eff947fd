"""Calls, results and errors as frames."""

from __future__ import annotations

import pickle
import threading

import pytest

from distrib import RemoteError, RemoteTraceback, SerializationError
from distrib._serialize import dumps, dumps_error, error_info, loads, loads_error


def test_large_buffers_travel_out_of_band() -> None:
    big = pickle.PickleBuffer(bytearray(1_000_000))
    frames = dumps(("x", big))
    assert len(frames) == 2 and memoryview(frames[1]).nbytes == 1_000_000
    assert bytes(loads(frames)[1]) == bytes(1_000_000)


def test_lambdas_and_closures_go_by_value() -> None:
    k = 5
    frames = dumps((lambda x: x + k,))
    assert loads(frames)[0](1) == 6


def test_what_cannot_pickle_names_the_cause() -> None:
    with pytest.raises(SerializationError, match="cannot pickle"):
        dumps(threading.Lock())


def test_errors_keep_type_and_traceback_or_become_remote_error() -> None:
    try:
        raise ValueError("bad")
    except ValueError as exc:
        frames, info = dumps_error(exc), error_info(exc)
    back = loads_error(frames, info)
    assert isinstance(back, ValueError) and str(back) == "bad"
    assert isinstance(back.__cause__, RemoteTraceback)
    assert 'raise ValueError("bad")' in back.__cause__.text
    assert back.__traceback__ is not None

    class Local(Exception):
        pass

    try:
        raise Local("odd")
    except Local as exc:
        lost = loads_error([], error_info(exc))
    assert isinstance(lost, RemoteError) and lost.message == "odd" and "Local" in lost.type_name
    assert pickle.loads(pickle.dumps(lost)).traceback == lost.traceback


def test_worker_side_distrib_errors_come_back_as_their_own_type() -> None:
    from distrib import WorkspaceError

    exc = loads_error([], {"type": "distrib.WorkspaceError", "message": "file x changed"})
    assert isinstance(exc, WorkspaceError) and str(exc) == "file x changed"

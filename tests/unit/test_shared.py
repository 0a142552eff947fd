"""Shared objects on the Main: one per content, findable while a call holds it."""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest

from distrib import SerializationError, share
from distrib._shared import SHARE_MIN, dumps_call, find


def _call(x: object) -> object:
    return x


def test_the_same_bytes_shared_twice_are_one_object_findable_while_a_call_holds_it() -> None:
    table = np.arange(SHARE_MIN // 8 + 1, dtype=np.float64)
    first, second = share(table), share(table.copy())
    assert first is second
    _, held = dumps_call(_call, b"", (first,), {})
    name = first.name
    del first, second
    gc.collect()
    assert held is not None and find(name) is held[name]  # a pending call keeps it
    del held
    gc.collect()
    assert find(name) is None


def test_large_arguments_become_shared_the_second_time_their_bytes_are_passed() -> None:
    data = bytes(range(256)) * (SHARE_MIN // 256 + 1)
    assert dumps_call(_call, b"", (data,), {})[1] is None  # first sight: inline
    _, taken = dumps_call(_call, b"", (), {"data": data})
    assert taken is not None and len(taken) == 1
    assert dumps_call(_call, b"", (1, "small"), {})[1] is None


def test_a_shared_object_pickled_outside_a_call_says_so() -> None:
    with pytest.raises(SerializationError, match="can only be passed to distributed calls"):
        pickle.dumps(share(b"x" * 10))


def test_an_object_that_cannot_be_written_leaves_no_file(tmp_path) -> None:
    from distrib.worker._objects import write

    good = memoryview(b"x" * 1000)
    gone = memoryview(bytearray(10))
    gone.release()  # writing it fails after the first frame is written
    with pytest.raises(ValueError):
        write(tmp_path / ("ab" * 16), [good, gone])
    assert list(tmp_path.iterdir()) == []

"""A remote error's traceback, made again in the Main: each frame's file, line and function,
and no underline at columns that are not the frame's own."""

from __future__ import annotations

import sys
import traceback

import pytest

from distrib import _sealed


def _fails() -> None:
    values = {"present": 1}
    total = values["present"] + values["absent_key_with_a_long_name"]  # (a long line)
    print(total)


def test_a_rebuilt_traceback_names_each_frame_and_underlines_nothing_wrongly() -> None:
    try:
        _fails()
    except KeyError as exc:
        caught = exc
    rebuilt = _sealed.loads_error(_sealed.dumps_error(caught), _sealed.error_info(caught))
    assert isinstance(rebuilt, KeyError) and rebuilt.args == caught.args
    frames = traceback.extract_tb(rebuilt.__traceback__)
    assert [(f.name, f.lineno) for f in frames][-1] == (
        "_fails", _fails.__code__.co_firstlineno + 2)
    text = "".join(traceback.format_exception(rebuilt))
    lines = text.splitlines()
    # Its own part comes last, after its cause's (the traceback as the worker printed it).
    at = max(i for i, line in enumerate(lines) if line.lstrip().startswith("total = "))
    # The stub tblib raises each frame from had its own columns, 0 to 23, shown under the
    # file's line at the wrong place.
    assert lines[at + 1].startswith("KeyError"), text


@pytest.mark.skipif(sys.version_info < (3, 11), reason="columns came with Python 3.11")
def test_the_stub_has_lines_and_no_columns() -> None:
    from distrib._tracebacks import _STUB

    assert {(line, col, end) for line, _, col, end in _STUB.co_positions()} <= {
        (1, None, None), (0, None, None), (None, None, None)}

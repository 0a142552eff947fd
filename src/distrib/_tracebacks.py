"""A traceback made again from tblib's dict of it, its frames carrying their lines and no
columns.

Python 3.11 and later underline the failing expression of each frame from its code's column
positions. tblib makes each frame by running a stub, ``raise __traceback_maker``, under the
frame's name and line: its columns are the stub's own, so the lines shown from the real file
were underlined at the wrong place (tblib issue #76). A stub whose positions have lines only
is shown with no underline, as Python 3.10 showed every frame.
"""

from __future__ import annotations

import sys
from types import CodeType, TracebackType
from typing import Any

import tblib

_NO_COLUMNS = 13  # a location entry of lines only (CPython's Objects/locations.md)
_NONE = 15  # an entry of no location


def _svarint(value: int) -> bytes:
    """CPython's signed varint: the sign in the low bit, then 6 bits a byte (0x40: more)."""
    rest = (-value << 1) | 1 if value < 0 else value << 1
    out = bytearray()
    while rest >= 0x40:
        out.append(0x40 | (rest & 0x3F))
        rest >>= 6
    out.append(rest)
    return bytes(out)


def _lines_only(code: CodeType) -> CodeType:
    """``code`` with each instruction's line kept and its columns dropped."""
    table = bytearray()
    line = code.co_firstlineno
    positions = [p[0] for p in code.co_positions()]  # (one per code unit)
    at = 0
    while at < len(positions):
        here, run = positions[at], 1
        while run < 8 and at + run < len(positions) and positions[at + run] == here:
            run += 1
        if here is None:
            table.append(0x80 | _NONE << 3 | (run - 1))
        else:
            table.append(0x80 | _NO_COLUMNS << 3 | (run - 1))
            table += _svarint(here - line)
            line = here
        at += run
    return code.replace(co_linetable=bytes(table))


_STUB = compile("raise __traceback_maker", "<string>", "exec")
if sys.version_info >= (3, 11):  # (3.10 has no columns)
    _STUB = _lines_only(_STUB)


def rebuilt(frames: dict[str, Any]) -> TracebackType | None:
    """The traceback of tblib's dict ``frames`` (``Traceback.as_dict()``), as tblib's
    ``as_traceback`` makes it, but with the stub above."""
    current: Any = tblib.Traceback.from_dict(frames)
    top: TracebackType | None = None
    last: TracebackType | None = None
    while current is not None:
        f_code = current.tb_frame.f_code
        code = _STUB.replace(co_firstlineno=current.tb_lineno, co_argcount=0,
                             co_filename=f_code.co_filename, co_name=f_code.co_name,
                             co_freevars=(), co_cellvars=())
        try:
            exec(code, dict(current.tb_frame.f_globals), dict(current.tb_frame.f_locals))
        except Exception:  # (the NameError the stub raises: its traceback is the frame)
            made = sys.exc_info()[2]
            assert made is not None and made.tb_next is not None
            if last is None:
                top = made.tb_next
            else:
                last.tb_next = made.tb_next
            last = made.tb_next
        current = current.tb_next
    return top

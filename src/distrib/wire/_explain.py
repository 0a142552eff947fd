"""Why a msgpack header is not a message, in words that name the message and the field: the
text of the ``ProtocolError`` that ``_codec`` and ``_pipe`` raise (off the hot path: built
only for a header that does not decode).

msgspec's own error names a position in the header's list (``Expected `int`, got `str` - at
`$[2]```); this turns that into the field's name and what it should hold.
"""

from __future__ import annotations

import enum
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

_AT = re.compile(r"(?P<problem>.*) - at (?P<key>`key` in )?`\$\[(?P<index>\d+)\](?P<rest>.*)`",
                 re.DOTALL)
_MISMATCH = re.compile(r"Expected `[^`]*`, got `")
_WANT: dict[Any, str] = {
    int: "int", str: "str", bool: "bool", bytes: "bytes", list[str]: "a list of str",
    list[int]: "a list of int", dict[str, str]: "a map of str to str",
    dict[str, int]: "a map of str to int", float | int | None: "a number or nil",
    float | None: "a number or nil",
}


def explain(head: Any, error: str, kinds: Mapping[Any, tuple[type, Sequence[str]]],
            kind: str, optional: int = 0) -> str:
    """What is wrong with ``head`` (msgpack: a list, its kind first, then its fields), given
    msgspec's ``error`` and the fields of each kind (``kinds``); ``kind`` says what the first
    item names ("verb", "message type"). A header may leave out its last ``optional`` items."""
    import msgspec  # (here: an executor of another Python version has none, and never gets here)

    try:
        header = msgspec.msgpack.decode(head)
    except msgspec.DecodeError as exc:  # (msgspec checks a list's length before its items)
        return f"the header is not valid msgpack: {exc}"
    except msgspec.MsgspecError:  # (a map key of a type no dict takes)
        return f"the header does not make a message: {error}"
    if type(header) is not list or not header:
        return "the header is not a non-empty list"
    found = kinds.get(header[0]) if type(header[0]) in (str, int) else None
    if found is None:
        return f"unknown {kind} {header[0]!r}"
    cls, names = found
    label = cls.__name__
    if not len(names) - optional <= len(header) - 1 <= len(names):
        return f"{label}: expected {len(names)} fields, got {len(header) - 1}"
    at = _AT.fullmatch(error)
    if at is None or not 1 <= int(at["index"]) < len(header):
        return f"{label}: {error}"
    index = int(at["index"])
    field, value = names[index - 1], header[index]
    rest = f"{at['rest']} key".lstrip() if at["key"] else at["rest"]
    problem = at["problem"].replace("`", "").replace("array", "list").replace("object", "map")
    problem = problem[:1].lower() + problem[1:]
    hint = typing.get_type_hints(cls)[field]
    if (isinstance(hint, type) and issubclass(hint, enum.Enum)
            or "matching regex" in at["problem"]):
        return f"{label}: unknown {field} {value!r}"
    want = _WANT.get(hint)
    if want is None:
        return f"{label}: {problem} (field {field}{', at ' + rest if rest else ''})"
    if rest:  # (inside a list or map)
        return f"{label}: expected {want} (field {field}, at {rest}: {problem})"
    if _MISMATCH.match(at["problem"]):
        got = "nil" if value is None else type(value).__name__
        return f"{label}: expected {want}, got {got} (field {field})"
    return f"{label}: {field} out of range: {problem}"

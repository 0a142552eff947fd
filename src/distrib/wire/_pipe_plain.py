"""The executor pipe without msgspec, for executors of a built environment of another Python
version: they import the worker's distrib and its pure-Python dependencies, but the worker's
msgspec is compiled for its own Python.

``Struct`` and ``Meta`` stand in for msgspec's (a message type becomes a frozen dataclass, its
bounds are not checked), and ``encode``/``decode`` use msgpack. The daemon always has msgspec,
so the side that checks what an executor sends is the same; what an executor decodes here comes
from its daemon, so only the verb and the field count are checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import msgpack


class Meta:
    """Bounds of a field (not checked here)."""

    def __init__(self, **bounds: Any) -> None:
        pass


class Struct:
    """A subclass becomes a frozen dataclass with ``__struct_fields__`` (its fields keyword-only
    if it says ``kw_only=True``)."""

    __struct_fields__: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, tag: str | int | None = None, kw_only: bool = False,
                          **options: Any) -> None:
        super().__init_subclass__()
        made: Any = dataclasses.dataclass(frozen=True, kw_only=kw_only)(cls)
        cls.__struct_fields__ = tuple(field.name for field in dataclasses.fields(made))


def field(*, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING) -> Any:
    """A field's default, as msgspec's ``field`` takes it."""
    return dataclasses.field(default=default, default_factory=default_factory)


def encode(message: Any) -> tuple[bytes, Sequence[Any]]:
    names = [name for name in message.__struct_fields__ if name != "frames"]
    head = msgpack.packb([message.VERB.value, *(getattr(message, name) for name in names)])
    return head, getattr(message, "frames", ())


def decode(types: dict[str, Any], head: bytes | bytearray, frames: list[Any]) -> Any:
    """The message of ``head`` and ``frames``, of the type its verb names in ``types``;
    ``ValueError`` if there is none, or if the field count is not that type's."""
    try:
        header = msgpack.unpackb(head, raw=False)
    except Exception as exc:  # msgpack raises many types on bad input; all mean the same
        raise ValueError(f"the header is not valid msgpack: {type(exc).__name__}") from None
    if type(header) is not list or not header:
        raise ValueError("the header is not a non-empty list")
    cls = types.get(header[0]) if type(header[0]) is str else None
    if cls is None:
        raise ValueError(f"unknown verb {header[0]!r}")
    names = [name for name in cls.__struct_fields__ if name != "frames"]
    if len(header) - 1 != len(names):
        raise ValueError(f"{cls.__name__}: expected {len(names)} fields, got {len(header) - 1}")
    if "frames" in cls.__struct_fields__:
        return cls(*header[1:], tuple(frames))
    if frames:
        raise ValueError(f"{cls.__name__}: expected no payload, got {len(frames)} frames")
    return cls(*header[1:])

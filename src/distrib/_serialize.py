"""Pickling of calls and results into frames (errors: ``_sealed``).

Frame 0 is the pickle stream (protocol 5); large buffers (``bytearray``, ``memoryview``, numpy
arrays, ``PickleBuffer``) travel out of band as frames of their own, without copies. Objects
that plain pickle handles by reference (functions and classes importable by module name) go
that way; what it cannot (lambdas, closures, REPL definitions) falls back to cloudpickle, which
pickles by value. In a Main whose ``__main__`` is not shipped (``python -c``, stdin, a REPL,
Jupyter, pytest), a function or class of ``__main__``, or of a module workers cannot import (not
installed, not in the shipped workspace), would pickle by a name workers lack: the whole object
then goes through cloudpickle, with such modules pickled by value.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from collections.abc import Sequence
from typing import Any

import cloudpickle

from distrib import _runtime
from distrib._errors import SerializationError

_OOB_MIN = 64 * 1024  # smaller buffers are cheaper in-band than as a frame of their own


def dumps(obj: Any) -> list[Any]:
    """Pickle ``obj`` into frames; raise ``SerializationError`` naming the cause on failure."""
    buffers: list[pickle.PickleBuffer] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < _OOB_MIN:
            return True  # true = serialize in-band
        buffers.append(buf)
        return False

    # Checked only without a shipped main script: a hook per object costs a tiny call 4 us.
    checked = not _runtime.main_shipped and _runtime.mode is _runtime.Mode.MAIN
    try:
        if checked:
            out = io.BytesIO()
            _NamesWorkersHave(out, protocol=5, buffer_callback=keep).dump(obj)
            head = out.getvalue()
        else:
            head = pickle.dumps(obj, protocol=5, buffer_callback=keep)
    except Exception:
        buffers.clear()
        try:
            if checked:
                out = io.BytesIO()
                _ByValuePickler(out, protocol=5, buffer_callback=keep).dump(obj)
                head = out.getvalue()
            else:
                head = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep)
        except Exception as exc:
            raise SerializationError(
                f"cannot pickle {_describe(obj)}: {type(exc).__name__}: {exc}"
            ) from exc
    return [head, *buffers]


class _NamesWorkersLack(pickle.PicklingError):
    """A function or class would pickle by a name that workers cannot look up."""


class _NamesWorkersHave(pickle.Pickler):
    """Plain pickle, refusing functions and classes of ``__main__`` (not shipped) or of modules
    workers cannot import, so that ``dumps`` falls back to cloudpickle, by value."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, type)) and _lacked(obj):
            raise _NamesWorkersLack(obj.__module__)
        return NotImplemented


class _ByValuePickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with every module workers cannot import met on the way pickled by value
    (a function of one calls a function of another)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, type)):
            _lacked(obj)
        return super().reducer_override(obj)


def _lacked(obj: types.FunctionType | type) -> bool:
    """Would ``obj`` pickle by a name workers lack? Its module, if not ``__main__`` (which
    cloudpickle takes by value), is then registered to be pickled by value."""
    module = getattr(obj, "__module__", None)
    if module == "__main__":
        return True
    if (isinstance(module, str) and module in sys.modules
            and module.partition(".")[0] != "distrib"
            and not _runtime.resolves_on_workers(module)):
        cloudpickle.register_pickle_by_value(sys.modules[module])
        return True
    return False


def by_value(obj: Any) -> bytes:
    """``obj`` pickled by cloudpickle, with the modules workers cannot import that it uses
    pickled by value too."""
    out = io.BytesIO()
    _ByValuePickler(out, protocol=5).dump(obj)
    return out.getvalue()


class _Bytes:
    """A large ``bytes`` pickled out of band, as a frame of its own: ``bytes`` are pickled
    in the stream (a copy) whatever the protocol. It unpickles as ``bytes`` (one copy, from
    the frame), so nothing of it is needed where it is loaded."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (bytes, (pickle.PickleBuffer(self.data),))


def out_of_band(obj: Any) -> Any:
    """``obj``, a large ``bytes`` wrapped to travel as a frame of its own (an argument or a
    result at the top level: ``bytes`` deeper inside travel in the stream)."""
    if type(obj) is bytes and len(obj) >= _OOB_MIN:
        return _Bytes(obj)
    return obj


def loads(frames: Sequence[Any]) -> Any:
    """Inverse of ``dumps``. Frames may be bytes, memoryviews or zmq frames."""
    views = [f.buffer if hasattr(f, "buffer") else f for f in frames]
    return pickle.loads(views[0], buffers=views[1:])


def _describe(obj: Any) -> str:
    if isinstance(obj, tuple) and obj and hasattr(obj[0], "__qualname__"):
        return f"the call of {obj[0].__qualname__}"
    return f"a {type(obj).__qualname__}"

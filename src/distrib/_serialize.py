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
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from distrib import _runtime
from distrib._errors import SerializationError

_OOB_MIN = 64 * 1024  # smaller buffers are cheaper in-band than as a frame of their own


def dumps(obj: Any, what: str = "") -> list[Any]:
    """Pickle ``obj`` into frames; raise ``SerializationError`` naming the cause (and ``what``
    was pickled, if given) on failure."""
    try:
        return to_frames(obj)
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle {what or _describe(obj)}: {type(exc).__name__}: {exc}"
        ) from exc


def dumps_call(fn: Any, named: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> list[Any]:
    """A call's frames: the function as ``named`` (``DistributedFunction.named``: pickled by
    name, the same for every call), then its arguments; or, when it has no name workers
    can look up (``named`` empty), an empty frame, then the function and its arguments."""
    if named:
        return [named, *dumps((args, kwargs), f"the call of {fn.__qualname__}")]
    return [b"", *dumps((fn, args, kwargs))]


# An executor's functions by the bytes that name them (``dumps_call``): loaded once each.
_FUNCTIONS: dict[bytes, Any] = {}


def loads_call(frames: Sequence[Any]) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """The function, arguments and keyword arguments of a call's frames (``dumps_call``)."""
    head = frames[0]
    head = head.buffer if hasattr(head, "buffer") else head
    if not len(head):
        fn, args, kwargs = loads(frames[1:])
        return fn, args, kwargs
    key = bytes(head)
    fn = _FUNCTIONS.get(key)
    if fn is None:
        fn = pickle.loads(key)
        if len(_FUNCTIONS) >= 256:
            _FUNCTIONS.clear()
        _FUNCTIONS[key] = fn
    args, kwargs = loads(frames[1:])
    return fn, args, kwargs


def to_frames(obj: Any, reduce: Callable[[Any], Any] | None = None) -> list[Any]:
    """Pickle ``obj`` into frames, raising what pickling raised: by name what workers can look
    up, else by value (cloudpickle); large buffers out of band. ``reduce``: a reducer tried
    first for every object (``NotImplemented``: the usual way)."""
    buffers: list[pickle.PickleBuffer] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < _OOB_MIN:
            return True  # true = serialize in-band
        buffers.append(buf)
        return False

    # Checked only without a shipped main script: a hook per object costs a tiny call 4 us
    # (plain pickle's C path, without one, is the usual case).
    checked = not _runtime.main_shipped and _runtime.mode is _runtime.Mode.MAIN
    hooked = checked or reduce is not None
    try:
        if hooked:
            head = _pickle_with(_NamesWorkersHave, obj, keep, checked, reduce)
        else:
            head = pickle.dumps(obj, protocol=5, buffer_callback=keep)
    except Exception:
        buffers.clear()
        if hooked:
            head = _pickle_with(_ByValuePickler, obj, keep, checked, reduce)
        else:
            head = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep)
    return [head, *buffers]


def _pickle_with(pickler: type[_NamesWorkersHave] | type[_ByValuePickler], obj: Any,
                 keep: Callable[[pickle.PickleBuffer], bool] | None, checked: bool,
                 reduce: Callable[[Any], Any] | None) -> bytes:
    out = io.BytesIO()
    pickler(out, keep, checked, reduce).dump(obj)
    return out.getvalue()


class _NamesWorkersLack(pickle.PicklingError):
    """A function or class would pickle by a name that workers cannot look up."""


class _NamesWorkersHave(pickle.Pickler):
    """Plain pickle; ``checked``: refusing functions and classes of ``__main__`` (not shipped)
    or of modules workers cannot import, so that ``to_frames`` falls back to cloudpickle, by
    value. ``reduce`` is tried on every object first."""

    def __init__(self, file: io.BytesIO, keep: Callable[[pickle.PickleBuffer], bool] | None,
                 checked: bool, reduce: Callable[[Any], Any] | None) -> None:
        super().__init__(file, protocol=5, buffer_callback=keep)
        self._checked, self._reduce = checked, reduce

    def reducer_override(self, obj: Any) -> Any:
        if self._checked and isinstance(obj, (types.FunctionType, type)) and _lacked(obj):
            raise _NamesWorkersLack(obj.__module__)
        return NotImplemented if self._reduce is None else self._reduce(obj)


class _ByValuePickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with every module workers cannot import met on the way pickled by value
    (a function of one calls a function of another); ``reduce`` is tried on every object
    first."""

    def __init__(self, file: io.BytesIO, keep: Callable[[pickle.PickleBuffer], bool] | None,
                 checked: bool, reduce: Callable[[Any], Any] | None) -> None:
        super().__init__(file, protocol=5, buffer_callback=keep)
        self._reduce = reduce

    def reducer_override(self, obj: Any) -> Any:
        if self._reduce is not None:
            reduced = self._reduce(obj)
            if reduced is not NotImplemented:
                return reduced
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
    return _pickle_with(_ByValuePickler, obj, None, False, None)


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

"""Pickling of calls, results and errors into frames.

Frame 0 is the pickle stream (protocol 5); large buffers (``bytearray``, ``memoryview``, numpy
arrays, ``PickleBuffer``) travel out of band as frames of their own, without copies. Objects
that plain pickle handles by reference (functions and classes importable by module name) go
that way; what it cannot (lambdas, closures, REPL definitions) falls back to cloudpickle, which
pickles by value.

Errors travel as data: a record of type name, message and traceback text, plus the exception
pickled with its traceback (tblib) when that works.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

import cloudpickle
import tblib

from distrib import _errors
from distrib._errors import RemoteError, RemoteTraceback, SerializationError
from distrib.wire._record import ErrorRecord

_OOB_MIN = 64 * 1024  # smaller buffers are cheaper in-band than as a frame of their own


def dumps(obj: Any) -> list[Any]:
    """Pickle ``obj`` into frames; raise ``SerializationError`` naming the cause on failure."""
    buffers: list[pickle.PickleBuffer] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < _OOB_MIN:
            return True  # true = serialize in-band
        buffers.append(buf)
        return False

    try:
        head = pickle.dumps(obj, protocol=5, buffer_callback=keep)
    except Exception:
        buffers.clear()
        try:
            head = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep)
        except Exception as exc:
            raise SerializationError(
                f"cannot pickle {_describe(obj)}: {type(exc).__name__}: {exc}"
            ) from exc
    return [head, *buffers]


def loads(frames: Sequence[Any]) -> Any:
    """Inverse of ``dumps``. Frames may be bytes, memoryviews or zmq frames."""
    views = [f.buffer if hasattr(f, "buffer") else f for f in frames]
    return pickle.loads(views[0], buffers=views[1:])


def _describe(obj: Any) -> str:
    if isinstance(obj, tuple) and obj and hasattr(obj[0], "__qualname__"):
        return f"the call of {obj[0].__qualname__}"
    return f"a {type(obj).__qualname__}"


def error_info(exc: BaseException) -> dict[str, str]:
    """The plain record of an exception: what a user needs even if the pickle is lost."""
    return ErrorRecord.of(exc).to_wire()


def dumps_error(exc: BaseException) -> list[Any]:
    """Pickle ``exc`` together with its traceback; ``[]`` when it does not pickle."""
    tb = tblib.Traceback(exc.__traceback__).as_dict() if exc.__traceback__ else None
    try:
        frames = dumps((exc, tb))
        pickle.loads(frames[0], buffers=frames[1:])  # proves it will load on the Main
    except Exception:
        return []
    return frames


def loads_error(frames: Sequence[Any], info: dict[str, str]) -> BaseException:
    """Rebuild a task's exception: same type with the remote traceback, else ``RemoteError``."""
    text = info.get("traceback", "")
    if frames:
        try:
            exc, tb = loads(frames)
            if isinstance(exc, BaseException):
                if tb is not None:
                    exc = exc.with_traceback(tblib.Traceback.from_dict(tb).as_traceback())
                exc.__cause__ = RemoteTraceback(text)
                return exc
        except Exception:
            pass  # the pickle does not load here (type missing on the Main): fall through
    type_name = info.get("type", "?")
    own = getattr(_errors, type_name.removeprefix("distrib."), None)
    if type_name.startswith("distrib.") and isinstance(own, type) and issubclass(
            own, _errors.DistribError) and own is not RemoteError:
        return own(info.get("message", ""))  # a worker-side distrib error, e.g. WorkspaceError
    return RemoteError(type_name, info.get("message", ""), text)

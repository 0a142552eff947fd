"""Errors pickled into frames. They travel as data: a record of type name, message and
traceback text (``error_info``), plus the exception itself (``dumps_error``), sealed one
exception at a time so that each comes back as itself wherever its class exists on the Main:

- an exception is rebuilt by its own ``__reduce__`` when a trial on the worker gives it back;
  else bare, from its type, ``args`` and ``__dict__`` without calling ``__init__`` (say, an
  ``__init__`` with other arguments than it passes to ``super().__init__``);
- each attribute is pickled on its own: one that does not pickle (a lock), or whose class the
  Main lacks, is left out and named in a note, and the exception keeps its type;
- its cause, context, group members and any exception it holds are sealed the same way, each
  with its traceback (tblib), so one whose class the Main lacks becomes a ``RemoteError`` that
  says so while the others come back as themselves.
"""

from __future__ import annotations

import contextvars
import io
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import cloudpickle
import tblib

from distrib import _errors, _runtime, _tracebacks
from distrib._errors import RemoteError, RemoteTraceback
from distrib.wire._record import ErrorRecord


def _qualified(module: str, name: str) -> str:
    # Executors import the main script as __distrib_main__; users know it as __main__.
    return f"{'__main__' if module == '__distrib_main__' else module}.{name}"


def error_info(exc: BaseException) -> dict[str, str]:
    """The plain record of an exception: what a user needs even if the pickle is lost; in an
    executor, with the folder its workspace's paths begin with (``root``)."""
    info = ErrorRecord.of(exc).to_wire()
    if _runtime.shipped_as:
        info["root"] = _runtime.shipped_as
    return info


def _record(exc: BaseException, chain: bool) -> dict[str, str]:
    return ErrorRecord.of(exc, chain=chain).to_wire()


def dumps_error(exc: BaseException) -> list[Any]:
    """Seal ``exc``, its traceback and the exceptions it refers to into one frame."""
    try:
        return [_seal(exc, set())]
    except Exception as why:  # even its bare form does not pickle
        return [_unsent(why)]


def loads_error(frames: Sequence[Any], info: dict[str, str]) -> BaseException:
    """Rebuild a task's exception: the same type, its chain and the remote traceback text at
    the end of its ``__cause__`` chain; ``RemoteError`` saying why when it cannot be rebuilt.

    Its frames in the worker's copy of the workspace name the workspace's own files here
    (an editor opens them; the source lines show)."""
    token = _moving.set(_move(info))
    try:
        return _loads_error(frames, info)
    finally:
        _moving.reset(token)


# While an error is rebuilt: (the worker's folder, this process's) of the shipped workspace.
_moving: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "distrib_moving", default=None)


def _move(info: dict[str, str]) -> tuple[str, str] | None:
    there, here = info.get("root"), _runtime.shipped_as or _runtime.shipped_root
    if not isinstance(there, str) or not there or not here or there == here:
        return None
    return there.rstrip(os.sep) + os.sep, here.rstrip(os.sep) + os.sep


def _moved_text(text: str) -> str:
    """A traceback's text, its workspace files named as here."""
    move = _moving.get()
    return text if move is None else text.replace(f'File "{move[0]}', f'File "{move[1]}')


def _moved_frames(tb: dict[str, Any]) -> dict[str, Any]:
    """A traceback as tblib's dict, its workspace files named as here (changed in place)."""
    move = _moving.get()
    node: Any = tb
    while move is not None and isinstance(node, dict):
        code = node.get("tb_frame", {}).get("f_code", {})
        name = code.get("co_filename")
        if isinstance(name, str) and name.startswith(move[0]):
            code["co_filename"] = move[1] + name[len(move[0]):]
        node = node.get("tb_next")
    return tb


def _loads_error(frames: Sequence[Any], info: dict[str, str]) -> BaseException:
    text = _moved_text(info.get("traceback", ""))
    if frames:
        frame = frames[0]
        try:
            exc = _unseal(frame.buffer if hasattr(frame, "buffer") else frame)
        except Exception as why:
            return _remote_error(info, _why(why, info))
        _attach_remote_traceback(exc, RemoteTraceback(text))
        return exc
    type_name = info.get("type", "?")
    own = getattr(_errors, type_name.removeprefix("distrib."), None)
    if type_name.startswith("distrib.") and isinstance(own, type) and issubclass(
            own, _errors.DistribError) and own is not RemoteError:
        return own(info.get("message", ""))  # a worker-side distrib error, e.g. WorkspaceError
    return _remote_error(info, "the worker sent no pickle of it")


# --- sealing: the worker side ----------------------------------------------------------------


class _Payload(NamedTuple):
    """One exception as it travels: how to make it, then what to set on it."""

    make: Callable[..., Any]  # the callable of its own reduce, or _bare
    make_args: tuple[Any, ...]
    state: Any  # its own reduce's state, unless that is a dict (then in attrs)
    setter: Callable[[Any, Any], Any] | None  # its own reduce's state setter, if any
    attrs: dict[str, bytes] | None  # attributes, each pickled on its own
    traceback: dict[str, Any] | None  # tblib's dict
    cause: BaseException | None
    context: BaseException | None
    suppress_context: bool
    notes: list[str] | None
    lost: list[str]  # what did not pickle on the worker


class _ErrorPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """Pickles by reference where it can, by value where it must; every exception met on the
    way becomes a sealed blob of its own, rebuilt (or not) apart from what holds it."""

    def __init__(self, file: io.BytesIO, stack: set[int]) -> None:
        super().__init__(file, protocol=5)
        self._stack = stack  # ids of the exceptions being sealed: a cycle ends in None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseException):
            if id(obj) in self._stack:
                return (_nothing, ())
            try:
                blob = _seal(obj, self._stack)
            except Exception as why:
                blob = _unsent(why)
            # Its record without its chain: the task's record holds the whole chain once.
            return (_open, (blob, _record(obj, chain=False)))
        return super().reducer_override(obj)


def _pickle(obj: Any, stack: set[int]) -> bytes:
    out = io.BytesIO()
    _ErrorPickler(out, stack).dump(obj)
    return out.getvalue()


def _seal(exc: BaseException, stack: set[int]) -> bytes:
    """``exc`` as a pickled ``_Payload``: by its own reduce if that gives it back, else bare."""
    stack.add(id(exc))
    try:
        notes = getattr(exc, "__notes__", None)
        base = _Payload(
            _bare, (), None, None, None,
            _traceback_dict(exc),
            exc.__cause__, exc.__context__, exc.__suppress_context__,
            [str(n) for n in notes] if isinstance(notes, (list, tuple)) else None, [])
        own = _own_reduce(exc)
        if own is not None:
            make, make_args, state, setter = own
            payload = base._replace(make=make, make_args=make_args, state=state, setter=setter)
            lost: list[str] = []
            if isinstance(state, dict) and setter is None:
                attrs, lost = _seal_attributes(state, stack)
                payload = payload._replace(state=None, attrs=attrs)
            if not lost:
                try:
                    return _pickle(payload, stack)
                except Exception:
                    pass  # its reduce's arguments or state do not pickle
        # Plain pickle would fail: send it bare, so that no __init__ on the Main makes anew
        # what was left out.
        attrs, lost = _seal_attributes(vars(exc), stack)
        payload = base._replace(make_args=(type(exc), exc.args), attrs=attrs, lost=lost)
        try:
            return _pickle(payload, stack)
        except Exception:
            args = tuple(_picklable_or_repr(arg, f"args[{i}]", lost, stack)
                         for i, arg in enumerate(exc.args))
            return _pickle(payload._replace(make_args=(type(exc), args), lost=lost), stack)
    finally:
        stack.discard(id(exc))


def _traceback_dict(exc: BaseException) -> dict[str, Any] | None:
    if exc.__traceback__ is None:
        return None
    try:
        return tblib.Traceback(exc.__traceback__).as_dict()  # type: ignore[no-any-return]
    except Exception:  # say, a RecursionError's thousand frames: the record's text has them
        return None


def _own_reduce(exc: BaseException) -> tuple[Callable[..., Any], tuple[Any, ...], Any,
                                              Callable[[Any, Any], Any] | None] | None:
    """``exc``'s own reduce if a trial rebuild gives it back: no error, and the same type and
    args where it is made from its args (an ``__init__`` may take other arguments)."""
    try:
        reduced = exc.__reduce_ex__(5)
        if not isinstance(reduced, tuple) or any(x is not None for x in reduced[3:5]):
            return None  # a global name, or list or dict items: not an exception's way
        make, make_args = reduced[0], reduced[1]
        state = reduced[2] if len(reduced) > 2 else None
        setter = reduced[5] if len(reduced) > 5 else None
        trial = make(*make_args)
        if setter is not None:
            setter(trial, state)
        elif state is not None:
            trial.__setstate__(state)
        if make_args is exc.args and (type(trial) is not type(exc) or trial.args != exc.args):
            return None
        return make, make_args, state, setter
    except Exception:
        return None


def _seal_attributes(attrs: dict[str, Any], stack: set[int]) -> tuple[dict[str, bytes], list[str]]:
    sealed: dict[str, bytes] = {}
    lost: list[str] = []
    for name, value in attrs.items():
        if name != "__notes__":  # the notes travel on their own
            try:
                sealed[name] = _pickle(value, stack)
            except Exception:
                lost.append(f"{name} (a {_type_name(value)} does not pickle)")
    return sealed, lost


def _picklable_or_repr(value: Any, name: str, lost: list[str], stack: set[int]) -> Any:
    try:
        _pickle(value, stack)
        return value
    except Exception:
        lost.append(f"{name} (a {_type_name(value)} does not pickle; sent as its repr)")
        return repr(value)


def _type_name(value: Any) -> str:
    return _qualified(type(value).__module__, type(value).__qualname__)


def _explain(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _unsent(why: Exception) -> bytes:
    """What travels instead of an exception that does not pickle: why (see ``_unseal``)."""
    return pickle.dumps(f"it could not be pickled on the worker: {_explain(why)}")


# --- unsealing: the Main side ----------------------------------------------------------------


class _MissingClass(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _NotSent(Exception):
    """The worker sent why it could not pickle the exception instead of the exception."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            raise _MissingClass(_qualified(module, name)) from None


def _load(blob: bytes | memoryview) -> Any:
    return _Unpickler(io.BytesIO(blob)).load()


def _unseal(blob: bytes | memoryview) -> BaseException:
    payload = _load(blob)
    if isinstance(payload, str):
        raise _NotSent(payload)
    if not isinstance(payload, _Payload):
        raise TypeError(f"expected a sealed exception, got a {type(payload).__qualname__}")
    return _build(payload)


def _build(p: _Payload) -> BaseException:
    exc = p.make(*p.make_args)
    if not isinstance(exc, BaseException):
        raise TypeError(f"its reduce made a {type(exc).__qualname__}, not an exception")
    if p.setter is not None:
        p.setter(exc, p.state)
    elif p.state is not None:
        exc.__setstate__(p.state)
    lost = list(p.lost)
    if p.attrs is not None:
        values: dict[str, Any] = {}
        for name, blob in p.attrs.items():
            try:
                values[name] = _load(blob)
            except Exception as why:
                lost.append(f"{name} ({_why(why)})")
        if p.make is _bare:
            exc.__dict__.update(values)
        else:
            exc.__setstate__(values)
    if p.traceback is not None:
        exc = exc.with_traceback(_tracebacks.rebuilt(_moved_frames(p.traceback)))
    exc.__context__ = p.context
    exc.__cause__ = p.cause
    exc.__suppress_context__ = p.suppress_context
    if p.notes is not None:
        exc.__notes__ = list(p.notes)
    if lost:
        exc.add_note(f"[distrib] not brought back from the worker: {'; '.join(lost)}")
    return exc


def _bare(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """An exception of ``cls`` with ``args``, made without calling its ``__init__``."""
    try:
        exc = cls.__new__(cls, *args)  # an exception group needs its message and members here
    except TypeError:
        exc = cls.__new__(cls)
    exc.args = args
    return exc


def _open(blob: bytes, info: dict[str, str]) -> BaseException:
    """A sealed exception met inside another: itself, else a ``RemoteError`` saying why."""
    try:
        return _unseal(blob)
    except Exception as why:
        return _remote_error(info, _why(why, info))


def _nothing() -> None:
    return None


def _why(exc: Exception, info: dict[str, str] | None = None) -> str:
    if isinstance(exc, _MissingClass):
        kind = "class " if info is not None and info.get("type") == exc.name else ""
        return f"{kind}{exc.name} does not exist on the Main"
    if isinstance(exc, _NotSent):
        return str(exc)
    return f"it could not be rebuilt on the Main: {_explain(exc)}"


def _remote_error(info: dict[str, str], why: str) -> RemoteError:
    return RemoteError(info.get("type", "?"), info.get("message", ""),
                       _moved_text(info.get("traceback", "")), why)


def _attach_remote_traceback(exc: BaseException, remote: RemoteTraceback) -> None:
    """Make ``remote`` the last cause of ``exc``'s ``__cause__`` chain; keep its context flag."""
    node, seen = exc, {id(exc)}
    while node.__cause__ is not None:
        node = node.__cause__
        if id(node) in seen:
            return  # a cycle of causes has no end to attach to
        seen.add(id(node))
    suppress = node.__suppress_context__
    node.__cause__ = remote
    node.__suppress_context__ = suppress

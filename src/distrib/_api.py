"""The ``@distributed`` decorator and the callable it returns."""

from __future__ import annotations

import functools
import importlib
import pickle
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, overload

import cloudpickle

from distrib import _inputs, _runtime, _serialize
from distrib._errors import ConfigError, MainGuardError
from distrib._response import Response
from distrib.wire._messages import check_redistribution

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Requirements and policies of a ``@distributed`` function."""

    platform: tuple[str, ...] = ("*",)
    threads: int = 1
    retries: int = 3
    timeout: float | None = None
    outputs: tuple[str, ...] = ()  # .gitignore-style globs of written files sent back
    redistribution: str | None = None  # how its calls inside tasks go (None: the Main's)
    speculative: bool = False  # safe to repeat: a straggling run may get a second copy

    def __reduce__(self) -> tuple[Any, ...]:
        # Its fields in order: a dataclass's own pickling looks them up at every call
        # (a function wrapped at run time takes its options along with every call).
        return (TaskOptions, (self.platform, self.threads, self.retries, self.timeout,
                              self.outputs, self.redistribution, self.speculative))


class DistributedFunction(Generic[P, T]):
    """A function whose calls run on workers and return ``Response`` handles."""

    __wrapped__: Callable[P, T]  # the plain function (set by update_wrapper); executors call it

    def __init__(self, fn: Callable[P, T], options: TaskOptions) -> None:
        functools.update_wrapper(self, fn)
        self._fn = fn
        self.options = options
        self._named: tuple[tuple[Any, ...], bytes] | None = None  # (``named``, and when)

    def __call__(self, /, *args: P.args, **kwargs: P.kwargs) -> Response[T]:
        if _runtime.mode is _runtime.Mode.WORKER_IMPORT:
            raise MainGuardError(
                f"{self._fn.__qualname__}() was called while a worker imported the main script "
                f"{_runtime.main_script or ''}: calls at import time would run again on every "
                'worker. Put them under `if __name__ == "__main__":`.'
            )
        if _inputs.passes_responses(args, kwargs):
            return _inputs.call_when_ready(self._fn.__qualname__, self._call, args, kwargs)
        return self._call(args, kwargs)

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Response[T]:
        if _runtime.mode is _runtime.Mode.WORKER_TASK:
            from distrib.executor import _subcalls  # (in an executor: its task's calls go out)

            response = _subcalls.submit(self, args, kwargs)
            return response if response is not None else self._run_in_place(args, kwargs)
        from distrib.main._current import submit  # the session imports this module

        return submit(self, args, kwargs)

    def local(self, /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the plain function here, in this process."""
        return self._fn(*args, **kwargs)

    def map(self, /, *iterables: Iterable[Any], progress: bool = False, **kwargs: Any
            ) -> list[Response[T]]:
        """Submit one call per item; several iterables are zipped, as with ``map``, and
        keyword arguments go to every call: ``f.map(range(4), scale=2)``. ``progress``: draw
        their progress on stderr until all have finished (see ``distrib.progress``)."""
        responses = [self(*args, **kwargs) for args in zip(*iterables)]
        if progress:
            from distrib._progress import Tracker

            Tracker(responses, self._fn.__qualname__)  # (draws in its own thread until done)
        return responses

    def _run_in_place(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Response[T]:
        # Inside a task, out of an executor's reach (a thread of its own it started in a
        # subprocess, say): the call runs here.
        response: Response[T] = Response(0, self._fn.__qualname__, None)
        try:
            response._set_outcome(None, self._fn(*args, **kwargs))
        except Exception as exc:
            response._set_outcome(None, exc=exc)
        return response

    def __repr__(self) -> str:
        return f"<distributed {self._fn.__module__}.{self._fn.__qualname__}>"

    def named(self) -> bytes:
        """This function pickled by the name workers find it by (the same for every call:
        kept while what is shipped stays the same), or b"" when it travels by value."""
        now = (_runtime.mode, _runtime.main_shipped, _runtime.shipped_root)
        if self._named is None or self._named[0] != now:
            reduced = self.__reduce__()
            self._named = now, (pickle.dumps(self, protocol=5)
                                if reduced[0] in (_lookup, _wrapper) else b"")
        return self._named[1]

    def __reduce__(self) -> tuple[Any, ...]:
        module, qualname = self._fn.__module__, self._fn.__qualname__
        if module != "__main__" and not _runtime.resolves_on_workers(module):
            # Workers cannot import its module: it travels by value, with what it uses there.
            cloudpickle.register_pickle_by_value(sys.modules[module])
            return (_by_value, (_serialize.by_value(self._fn), self.options))
        by_reference = (module != "__main__" or _runtime.main_shipped) and _finds(
            self, module, qualname)
        if by_reference:
            return (_lookup, (module, qualname))
        if module == "__main__" and not _runtime.main_shipped or not _finds(
                self._fn, module, qualname):
            # By value: plain pickle fails on the function and the caller falls back to
            # cloudpickle.
            return (DistributedFunction, (self._fn, self.options))
        # The function by its name (wrapped at run time): its executors keep one wrapper.
        o = self.options
        return (_wrapper, (self._fn, o.platform, o.threads, o.retries, o.timeout, o.outputs,
                           o.redistribution, o.speculative))


def _finds(obj: object, module: str, qualname: str) -> bool:
    """Does ``module.qualname`` name ``obj`` here? (Else it must travel by value.)"""
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is obj


# An executor's wrappers of functions wrapped at run time (``distributed(fn)`` not at a
# module's top level), whose calls name the function: one per function and options, not one
# per call (making one copies the function's attributes).
_WRAPPERS: dict[tuple[Any, ...], DistributedFunction[..., Any]] = {}


def _wrapper(fn: Callable[..., Any], *options: Any) -> DistributedFunction[..., Any]:
    key = (fn, *options)
    try:
        return _WRAPPERS[key]
    except KeyError:
        pass
    except TypeError:  # (options that do not hash: never from this module's pickling)
        return DistributedFunction(fn, TaskOptions(*options))
    if len(_WRAPPERS) >= 256:
        _WRAPPERS.clear()
    made = _WRAPPERS[key] = DistributedFunction(fn, TaskOptions(*options))
    return made


def _by_value(fn: bytes, options: TaskOptions) -> DistributedFunction[..., Any]:
    return DistributedFunction(pickle.loads(fn), options)


def _lookup(module: str, qualname: str) -> DistributedFunction[..., Any]:
    """Find a ``@distributed`` function by name (on a worker, in its environment)."""
    obj: Any = importlib.import_module(_runtime.MAIN_ALIAS if module == "__main__" else module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, DistributedFunction):
        return obj
    return DistributedFunction(obj, TaskOptions())


@overload
def distributed(fn: Callable[P, T], /) -> DistributedFunction[P, T]: ...


@overload
def distributed(
    *,
    platform: str | Iterable[str] = "*",
    threads: int = 1,
    retries: int = 3,
    timeout: float | None = None,
    outputs: str | Iterable[str] | None = None,
    redistribution: str | None = None,
    speculative: bool = False,
) -> Callable[[Callable[P, T]], DistributedFunction[P, T]]: ...


def distributed(
    fn: Callable[P, T] | None = None,
    /,
    *,
    platform: str | Iterable[str] = "*",
    threads: int = 1,
    retries: int = 3,
    timeout: float | None = None,
    outputs: str | Iterable[str] | None = None,
    redistribution: str | None = None,
    speculative: bool = False,
) -> DistributedFunction[P, T] | Callable[[Callable[P, T]], DistributedFunction[P, T]]:
    """Make a function's calls run on workers.

    ``platform``: glob (or globs) a worker's platform tag must match, e.g. ``"linux-*"``.
    ``threads``: slots the task reserves on its worker. ``retries``: how often a task whose
    executor or worker died is tried again. ``timeout``: seconds a run may take on the worker.
    ``outputs``: ``.gitignore``-style globs, relative to the task's working folder, of files
    the task writes that come back with its result and are written into this Main's workspace
    at the same relative path before ``unwrap()`` returns (e.g. ``"results/**"``).
    ``redistribution``: how its calls made inside tasks go: ``"relayed"`` (through the Main),
    ``"direct"`` (worker to worker) or ``"auto"``; None: the Main's ``redistribution`` setting.
    ``speculative``: its calls are safe to run twice: when a run's last tasks straggle on a
    slow or stuck worker while other slots are idle, a second copy starts elsewhere, the first
    to end gives the result and the other is cancelled (needs ``retries`` >= 1).
    """
    platforms = (platform,) if isinstance(platform, str) else tuple(platform)
    if not platforms or not all(isinstance(p, str) and p for p in platforms):
        raise ConfigError(f"distributed(platform=...): expected a glob or globs, got {platform!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"distributed(threads=...): expected an int >= 1, got {threads!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"distributed(retries=...): expected an int >= 0, got {retries!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ConfigError(f"distributed(timeout=...): expected seconds > 0, got {timeout!r}")
    globs = () if outputs is None else (outputs,) if isinstance(outputs, str) else tuple(outputs)
    if not all(isinstance(g, str) and g.strip() and ".." not in g.split("/") for g in globs):
        raise ConfigError(f"distributed(outputs=...): expected globs relative to the working "
                          f"folder (no '..'), got {outputs!r}")
    if redistribution is not None:
        check_redistribution("distributed(redistribution=...)", redistribution)
    if not isinstance(speculative, bool):
        raise ConfigError(f"distributed(speculative=...): expected True or False, got "
                          f"{speculative!r}")
    if speculative and retries == 0:
        raise ConfigError("distributed(speculative=True) runs a second copy of a straggling "
                          "call, and retries=0 says its calls must never run twice: drop one "
                          "of the two")
    options = TaskOptions(platforms, threads, retries, None if timeout is None else float(timeout),
                          globs, redistribution, speculative)

    def wrap(f: Callable[P, T]) -> DistributedFunction[P, T]:
        return DistributedFunction(f, options)

    return wrap if fn is None else wrap(fn)

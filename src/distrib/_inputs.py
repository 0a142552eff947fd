"""Calls given a ``Response`` as an argument: it stands for its value.

The call is made once every such input has finished, with their values in their place (top
level arguments and keyword arguments, as Ray does with object refs; a Response inside a list
is passed as is). If an input failed or was cancelled, the call is not made and its Response
fails with ``InputFailed``, caused by that input's error. The caller gets the call's Response
at once either way.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import Any

from distrib import _runtime
from distrib._errors import InputFailed
from distrib._response import Response

Call = Callable[[tuple[Any, ...], dict[str, Any]], Response[Any]]


def passes_responses(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether any argument is a ``Response`` (checked at every call: kept cheap)."""
    for a in args:
        if isinstance(a, Response):
            return True
    return bool(kwargs) and any(isinstance(v, Response) for v in kwargs.values())


def call_when_ready(name: str, call: Call, args: tuple[Any, ...], kwargs: dict[str, Any]
                    ) -> Response[Any]:
    """The Response of ``call(args, kwargs)`` made once the Responses among them finish."""
    return _Waiting(name, call, args, kwargs).outer


class _Waiting:
    """One call waiting for its inputs; then the Response of the call made stands behind
    ``outer`` (cancelling ``outer`` cancels it, or the call before it is made)."""

    def __init__(self, name: str, call: Call, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.name, self.call, self.args, self.kwargs = name, call, args, kwargs
        self.outer: Response[Any] = _outer(name, self._cancel)
        self.inner: Response[Any] | None = None
        self.cancelled = False
        self._lock = threading.Lock()
        inputs = {id(r): r for r in (*args, *kwargs.values()) if isinstance(r, Response)}
        self._left = len(inputs)
        self._here = True  # the inputs that finished already call back in the caller's thread
        for response in inputs.values():
            response.add_done_callback(self._input_done)
        self._here = False

    def _input_done(self, _: Any) -> None:
        with self._lock:
            self._left -= 1
            if self._left or self.cancelled:
                return
        if self._here:
            self._place_or_fail()
        else:  # (not in the thread that finished the input: the Main's I/O thread, say)
            _placer().submit(self._place_or_fail)

    def _place_or_fail(self) -> None:
        try:
            self._place()
        except Exception as exc:  # (say, a value that does not pickle): the call's error
            self.outer._set_outcome(None, exc=exc)

    def _place(self) -> None:
        named = [(str(i), a) for i, a in enumerate(self.args)] + list(self.kwargs.items())
        for where, value in named:
            if isinstance(value, Response) and (exc := value.error(0)) is not None:
                raise InputFailed(
                    f"argument {where} of {self.name} ({value.name}#{value.task_id}) failed: "
                    f"{type(exc).__name__}: {exc}; {self.name} was not called") from exc
        args = tuple(_value(a) for a in self.args)
        kwargs = {k: _value(v) for k, v in self.kwargs.items()}
        inner = self.call(args, kwargs)
        self.outer.task_id = inner.task_id  # (its errors name the call as made)
        with self._lock:
            self.inner = inner
            cancelled = self.cancelled
        if cancelled:
            inner.cancel()
        inner.add_done_callback(self._inner_done)

    def _inner_done(self, inner: Any) -> None:
        exc = inner.error(0)
        self.outer._set_outcome(inner.worker, None if exc is not None else inner.result(0), exc)

    def _cancel(self, _: int) -> None:
        with self._lock:
            self.cancelled = True
            inner = self.inner
        if inner is not None:
            inner.cancel()


_placing: concurrent.futures.ThreadPoolExecutor | None = None
_placing_lock = threading.Lock()


def _forget_placer() -> None:
    """In a forked child the placer's thread is gone: the child starts its own."""
    global _placing, _placing_lock
    _placing, _placing_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_placer)


def _placer() -> concurrent.futures.ThreadPoolExecutor:
    """The thread that makes calls whose inputs finished: pickling their values (large,
    maybe) in the thread that finished the last input would hold up the Main's I/O."""
    global _placing
    with _placing_lock:
        if _placing is None:
            _placing = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="distrib-inputs", initializer=_runtime.own_thread)
        return _placing


def _outer(name: str, on_cancel: Callable[[int], None]) -> Response[Any]:
    """The caller's Response: inside a task, one whose waits lend the task's slots."""
    if _runtime.mode is _runtime.Mode.WORKER_TASK:
        from distrib.executor import _subcalls

        response = _subcalls.waiting_response(name, on_cancel)
        if response is not None:
            return response
    return Response(0, name, on_cancel)


def _value(arg: Any) -> Any:
    return arg.result(0) if isinstance(arg, Response) else arg

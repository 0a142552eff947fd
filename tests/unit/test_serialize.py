"""Calls, results and errors as frames."""

from __future__ import annotations

import os
import pickle
import sys
import threading
import traceback
import types
from collections.abc import Callable

import pytest

from distrib import RemoteError, RemoteTraceback, SerializationError
from distrib._sealed import dumps_error, error_info, loads_error
from distrib._serialize import dumps, loads


def test_large_buffers_travel_out_of_band() -> None:
    big = pickle.PickleBuffer(bytearray(1_000_000))
    frames = dumps(("x", big))
    assert len(frames) == 2 and memoryview(frames[1]).nbytes == 1_000_000
    assert bytes(loads(frames)[1]) == bytes(1_000_000)


def test_lambdas_and_closures_go_by_value() -> None:
    k = 5
    frames = dumps((lambda x: x + k,))
    assert loads(frames)[0](1) == 6


def test_what_cannot_pickle_names_the_cause() -> None:
    with pytest.raises(SerializationError, match="cannot pickle"):
        dumps(threading.Lock())


def test_errors_keep_type_and_traceback_or_become_remote_error() -> None:
    try:
        raise ValueError("bad")
    except ValueError as exc:
        frames, info = dumps_error(exc), error_info(exc)
    back = loads_error(frames, info)
    assert isinstance(back, ValueError) and str(back) == "bad"
    assert isinstance(back.__cause__, RemoteTraceback)
    assert 'raise ValueError("bad")' in back.__cause__.text
    assert back.__traceback__ is not None

    class Local(Exception):
        pass

    try:
        raise Local("odd")
    except Local as exc:
        lost = loads_error([], error_info(exc))
    assert isinstance(lost, RemoteError) and lost.message == "odd" and "Local" in lost.type_name
    assert pickle.loads(pickle.dumps(lost)).traceback == lost.traceback


def test_worker_side_distrib_errors_come_back_as_their_own_type() -> None:
    from distrib import WorkspaceError

    exc = loads_error([], {"type": "distrib.WorkspaceError", "message": "file x changed"})
    assert isinstance(exc, WorkspaceError) and str(exc) == "file x changed"


# --- exceptions come back as themselves ----------------------------------------------------


class BadInput(Exception):
    """Its __init__ takes more than it passes on: plain pickle cannot rebuild it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class KeywordOnly(Exception):
    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Formatted(Exception):
    """Plain pickle rebuilds it without error, but with its message formatted twice."""

    def __init__(self, code: int) -> None:
        super().__init__(f"error {code}")


def _rebuild_custom(message: str, code: int) -> Custom:
    exc = Custom(message, code)
    exc.via_reduce = True
    return exc


class Custom(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
        self.via_reduce = False

    def __reduce__(self) -> tuple[object, tuple[str, int]]:
        return (_rebuild_custom, (self.args[0], self.code))


class Locked(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()
        self.kept = 7


def raised(make: Callable[[], BaseException], cause: BaseException | None = None,
           context: BaseException | None = None) -> BaseException:
    """``make()`` raised (so it has a traceback), from ``cause`` or while handling ``context``."""
    try:
        if context is not None:
            try:
                raise context
            except BaseException:
                raise make()
        if cause is not None:
            raise make() from cause
        raise make()
    except BaseException as exc:
        return exc


def round_trip(exc: BaseException) -> BaseException:
    return loads_error(dumps_error(exc), error_info(exc))


def remote_text(exc: BaseException) -> str:
    """The RemoteTraceback text at the end of ``exc``'s ``__cause__`` chain."""
    node: BaseException | None = exc
    while node is not None and not isinstance(node, RemoteTraceback):
        node = node.__cause__
    assert isinstance(node, RemoteTraceback), "no RemoteTraceback in the cause chain"
    return node.text


def frames_of(exc: BaseException) -> list[str]:
    return [f"{f.name}:{f.line}" for f in traceback.extract_tb(exc.__traceback__)]


def test_an_init_with_extra_arguments_comes_back_as_itself() -> None:
    exc = raised(lambda: BadInput("bad value", 42))
    back = round_trip(exc)
    assert type(back) is BadInput and str(back) == "bad value" and back.code == 42
    assert back.args == ("bad value",)
    assert frames_of(back) == frames_of(exc) == ["raised:raise make()"]
    assert "raise make()" in remote_text(back) and "BadInput: bad value" in remote_text(back)


def test_keyword_only_arguments_and_reformatted_args() -> None:
    back = round_trip(raised(lambda: KeywordOnly("too long", field="name")))
    assert type(back) is KeywordOnly and str(back) == "name: too long"
    assert back.field == "name"
    again = round_trip(raised(lambda: Formatted(5)))
    assert type(again) is Formatted and again.args == ("error 5",)


def test_a_working_custom_reduce_is_used() -> None:
    back = round_trip(raised(lambda: Custom("made by reduce", 3)))
    assert type(back) is Custom and back.via_reduce and back.code == 3
    assert str(back) == "made by reduce" and back.__traceback__ is not None


def test_exception_group_members_come_back_with_their_tracebacks() -> None:
    members = [raised(lambda: BadInput("first", 1)),
               raised(lambda: KeywordOnly("x", field="f"), context=KeyError("k"))]
    back = round_trip(raised(lambda: ExceptionGroup("two failed", members)))
    assert type(back) is ExceptionGroup and back.message == "two failed"
    first, second = back.exceptions
    assert type(first) is BadInput and first.code == 1 and str(first) == "first"
    assert type(second) is KeywordOnly and second.field == "f"
    assert frames_of(first) == frames_of(members[0]) == ["raised:raise make()"]
    assert frames_of(second) == frames_of(members[1]) == ["raised:raise make()"]
    assert type(second.__context__) is KeyError
    matched, rest = back.split(BadInput)
    assert matched is not None and rest is not None  # except* sorts them as on the worker
    assert "two failed" in remote_text(back) and "KeywordOnly" in remote_text(back)


def test_raise_from_keeps_the_cause_and_ends_in_the_remote_traceback() -> None:
    exc = raised(lambda: BadInput("wrapped", 2), cause=raised(lambda: KeyError("k")))
    back = round_trip(exc)
    assert type(back) is BadInput and back.__suppress_context__
    cause = back.__cause__
    assert type(cause) is KeyError and cause.args == ("k",)
    assert frames_of(cause) == frames_of(exc.__cause__) == ["raised:raise make()"]
    assert frames_of(back) == ["raised:raise make() from cause"]
    assert isinstance(cause.__cause__, RemoteTraceback)
    assert "direct cause" in remote_text(back) and "wrapped" in remote_text(back)
    assert "RemoteTraceback" in "".join(traceback.format_exception(back))


def test_context_is_kept() -> None:
    back = round_trip(raised(lambda: KeywordOnly("while", field="f"),
                             context=raised(lambda: BadInput("first", 1))))
    context = back.__context__
    assert type(back) is KeywordOnly and type(context) is BadInput and context.code == 1
    assert not back.__suppress_context__ and isinstance(back.__cause__, RemoteTraceback)
    assert "During handling of the above exception" in remote_text(back)


def test_notes_are_kept() -> None:
    def noted() -> BaseException:
        exc = BadInput("noted", 3)
        exc.add_note("first note")
        exc.add_note("second note")
        return exc

    back = round_trip(raised(noted))
    assert type(back) is BadInput and back.__notes__ == ["first note", "second note"]


def test_an_attribute_that_does_not_pickle_is_dropped_and_named_in_a_note() -> None:
    back = round_trip(raised(lambda: Locked("locked")))
    assert type(back) is Locked and str(back) == "locked" and back.kept == 7
    assert not hasattr(back, "lock")
    assert len(back.__notes__) == 1 and "lock" in back.__notes__[0]
    assert "_thread.lock" in back.__notes__[0]
    argument = round_trip(raised(lambda: BadInput(threading.Lock(), 1)))  # type: ignore[arg-type]
    assert type(argument) is BadInput and "_thread.lock" in argument.args[0]
    assert "args[0]" in argument.__notes__[0]


def test_a_class_missing_on_the_loading_side_becomes_remote_error_saying_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("vanishing")
    exec("class Gone(Exception):\n    pass\n", module.__dict__)
    monkeypatch.setitem(sys.modules, "vanishing", module)
    alone = raised(lambda: module.Gone("only on the worker"))
    grouped = raised(lambda: ExceptionGroup("mixed", [alone, raised(lambda: BadInput("b", 1))]))
    frames = [dumps_error(alone), dumps_error(grouped)]
    monkeypatch.delitem(sys.modules, "vanishing")  # the Main lacks the module

    back = loads_error(frames[0], error_info(alone))
    assert isinstance(back, RemoteError) and back.type_name == "vanishing.Gone"
    assert back.message == "only on the worker"
    assert back.why == "class vanishing.Gone does not exist on the Main"
    assert "class vanishing.Gone does not exist on the Main" in str(back)
    assert "only on the worker" in back.traceback
    assert pickle.loads(pickle.dumps(back)).why == back.why

    group = loads_error(frames[1], error_info(grouped))
    assert type(group) is ExceptionGroup  # only the member whose class is missing is lost
    missing, kept = group.exceptions
    assert isinstance(missing, RemoteError) and "vanishing.Gone does not exist" in missing.why
    assert type(kept) is BadInput and kept.code == 1


def test_a_recursion_error_comes_back_as_itself_without_its_thousand_frames() -> None:
    def recurse(n: int) -> int:
        return recurse(n + 1)

    try:
        recurse(0)
    except RecursionError as exc:
        back = round_trip(exc)
    assert type(back) is RecursionError and back.__traceback__ is None  # too deep for tblib
    assert "Previous line repeated" in remote_text(back)


def test_large_bytes_at_the_top_level_travel_as_a_frame_of_their_own() -> None:
    from distrib._serialize import out_of_band

    data = os.urandom(1 << 20)
    frames = dumps(out_of_band(data))
    assert len(frames) == 2 and memoryview(frames[0]).nbytes < 1000  # (not in the stream)
    assert memoryview(frames[1]).obj is data  # (the bytes themselves: no copy)
    back = loads(frames)
    assert type(back) is bytes and back == data
    small = b"x" * 100
    assert out_of_band(small) is small and loads(dumps(out_of_band(small))) == small
    assert type(out_of_band(bytearray(data))) is bytearray  # (out of band already)


def test_task_options_pickle_every_field() -> None:
    # (They pickle by hand, for speed: a field added later must be added there too.)
    import dataclasses

    from distrib._api import TaskOptions

    options = TaskOptions(("linux-*",), 2, 1, 3.5, ("out/**",), "direct", True)
    assert all(getattr(options, f.name) != f.default for f in dataclasses.fields(options))
    assert len(options.__reduce__()[1]) == len(dataclasses.fields(options))
    assert pickle.loads(pickle.dumps(options)) == options


def test_a_function_wrapped_at_run_time_is_wrapped_once_where_its_calls_load() -> None:
    # ``distributed(fn)`` inside a function: its calls name ``fn`` and carry the options.
    # Loading makes the wrapper once per function and options, not once per call.
    import dataclasses

    import distrib
    from distrib._api import TaskOptions

    wrapped = distrib.distributed(pickle.dumps, retries=1)
    first, again = (pickle.loads(pickle.dumps(wrapped)) for _ in range(2))
    assert first is again and first.__wrapped__ is pickle.dumps
    assert first.options == wrapped.options
    other = pickle.loads(pickle.dumps(distrib.distributed(pickle.dumps, retries=2)))
    assert other is not first and other.options.retries == 2
    # Each option travels (one added later must be added to the pickled form too).
    options = TaskOptions(("linux-*",), 2, 1, 3.5, ("out/**",), "direct", True)
    assert all(getattr(options, f.name) != f.default for f in dataclasses.fields(options))
    full = pickle.loads(pickle.dumps(distrib.distributed(pickle.dumps, platform="linux-*",
                                                         threads=2, retries=1, timeout=3.5,
                                                         outputs=["out/**"],
                                                         redistribution="direct",
                                                         speculative=True)))
    assert full.options == options


def test_a_closure_wrapped_at_run_time_is_not_kept_where_its_calls_load() -> None:
    # (It travels by value: each call loads a new function, which no wrapper may hold on to.)
    import distrib

    kept = bytes(10)
    wrapped = distrib.distributed(lambda: kept)
    first, again = (loads(dumps(wrapped)) for _ in range(2))
    assert first is not again and first.__wrapped__() == kept


def test_a_call_names_its_function_once_and_the_executor_loads_it_once() -> None:
    import distrib
    from distrib._serialize import dumps_call, loads_call

    wrapped = distrib.distributed(pickle.dumps)  # (found by its name where its calls load)
    named = wrapped.named()
    assert named and wrapped.named() is named  # pickled once, not at every call
    first = loads_call([bytes(f) for f in dumps_call(wrapped, named, (1,), {"protocol": 2})])
    again = loads_call(dumps_call(wrapped, named, (2,), {}))
    assert first[0] is again[0] and first[1:] == ((1,), {"protocol": 2})
    assert again[1:] == ((2,), {})
    # A closure has no name to be found by: it travels with each call's arguments.
    kept = bytes(10)
    closure = distrib.distributed(lambda: kept)
    assert closure.named() == b""
    fn, args, kwargs = loads_call(dumps_call(closure, b"", (), {}))
    assert fn.__wrapped__() == kept and (args, kwargs) == ((), {})
    # What does not pickle is named with the call it was passed to.
    with pytest.raises(SerializationError, match="cannot pickle the call of dumps"):
        dumps_call(wrapped, named, (threading.Lock(),), {})

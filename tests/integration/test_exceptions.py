"""Exceptions raised by tasks come back as themselves: one user script, real worker daemons."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from tests.helpers import Workspace

CASES = ["extra", "keyword", "reduce", "group", "cause", "context", "notes", "lock", "missing"]

BOOM = '''
    """Tasks that fail in every way an exception can be hard to send back."""

    import threading

    from distrib import distributed


    class BadInput(Exception):
        def __init__(self, message, code):  # more than it passes to Exception
            super().__init__(message)
            self.code = code


    class KeywordOnly(Exception):
        def __init__(self, message, *, field):
            super().__init__(f"{field}: {message}")
            self.field = field


    def _rebuild(message, code):
        exc = Custom(message, code)
        exc.via_reduce = True
        return exc


    class Custom(Exception):
        def __init__(self, message, code):
            super().__init__(message)
            self.code = code
            self.via_reduce = False

        def __reduce__(self):
            return (_rebuild, (self.args[0], self.code))


    class Locked(Exception):
        def __init__(self, message):
            super().__init__(message)
            self.lock = threading.Lock()
            self.kept = 7


    def _member(i):
        try:
            if i == 0:
                raise BadInput("first member", 1)  # line:member0
            raise KeywordOnly("second member", field="f")  # line:member1
        except Exception as exc:
            return exc


    @distributed
    def fail(case):
        if case == "extra":
            raise BadInput("bad input", 42)  # line:extra
        if case == "keyword":
            raise KeywordOnly("too long", field="name")  # line:keyword
        if case == "reduce":
            raise Custom("made by reduce", 3)  # line:reduce
        if case == "group":
            raise ExceptionGroup("two failed", [_member(0), _member(1)])  # line:group
        if case == "cause":
            try:
                {}["key"]  # line:cause-inner
            except KeyError as exc:
                raise BadInput("wrapped", 2) from exc  # line:cause
        if case == "context":
            try:
                int("x")  # line:context-inner
            except ValueError:
                raise KeywordOnly("while handling", field="f")  # line:context
        if case == "notes":
            exc = BadInput("noted", 4)
            exc.add_note("check the input file")
            raise exc  # line:notes
        if case == "lock":
            raise Locked("locked")  # line:lock
        if case == "missing":
            class OnlyOnWorker(Exception):
                pass

            # Registered at run time, so only the worker has boom.OnlyOnWorker.
            OnlyOnWorker.__qualname__ = "OnlyOnWorker"
            globals()["OnlyOnWorker"] = OnlyOnWorker
            raise OnlyOnWorker("made on the worker")  # line:missing
'''

MAIN = '''
    import json
    import sys
    import traceback

    import boom
    from distrib import RemoteTraceback


    def describe(exc):
        if exc is None or isinstance(exc, RemoteTraceback):
            return None
        return {
            "type": type(exc).__qualname__,
            "boom_class": type(exc) is getattr(boom, type(exc).__qualname__, None),
            "str": str(exc).split("\\n")[0],
            "attrs": {k: repr(v) for k, v in vars(exc).items() if k != "__notes__"},
            "notes": getattr(exc, "__notes__", []),
            "frames": [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}"
                       for f in traceback.extract_tb(exc.__traceback__)],
            "members": [describe(m) for m in getattr(exc, "exceptions", ())],
            "cause": describe(exc.__cause__),
            "context": describe(exc.__context__),
            "why": getattr(exc, "why", None),
        }


    def remote_text(exc):
        while exc is not None and not isinstance(exc, RemoteTraceback):
            exc = exc.__cause__
        return exc.text if exc is not None else None


    if __name__ == "__main__":
        responses = {case: boom.fail(case) for case in sys.argv[1].split(",")}
        report = {}
        for case, response in responses.items():
            try:
                response.unwrap()
                raised = None
            except Exception as exc:
                raised = exc
            error = response.error()
            report[case] = {**describe(raised), "remote": remote_text(raised),
                            "error_type": type(error).__qualname__, "same": error is raised,
                            "ok": response.ok(),
                            "printed": "".join(traceback.format_exception(raised))}
        print(json.dumps(report))
'''


def lines_of(text: str) -> dict[str, int]:
    """The line of each ``# line:NAME`` marker in ``text``."""
    return {line.rsplit("# line:", 1)[1]: number
            for number, line in enumerate(textwrap.dedent(text).splitlines(), 1)
            if "# line:" in line}


def test_every_kind_of_task_exception_comes_back_as_itself(workspace: Workspace) -> None:
    workspace.write("boom.py", BOOM)
    workspace.write("main.py", MAIN)
    out = workspace.run("main.py", ",".join(CASES))  # the embedded local cluster
    assert out.returncode == 0, out.stderr
    report: dict[str, dict[str, Any]] = json.loads(out.stdout)
    line = lines_of(BOOM)

    for case in CASES:
        got = report[case]
        assert got["error_type"] == got["type"] and got["same"] and not got["ok"], (case, got)
        if case == "missing":
            continue  # a RemoteError: below
        # The remote line is in the rebuilt traceback and in the remote text at the chain's end.
        assert f"boom.py:{line[case]}" in got["frames"], (case, got["frames"])
        assert f'boom.py", line {line[case]}, in fail' in got["remote"], (case, got["remote"])
        assert "RemoteTraceback" in got["printed"]

    extra = report["extra"]
    assert extra["type"] == "BadInput" and extra["boom_class"] and extra["str"] == "bad input"
    assert extra["attrs"] == {"code": "42"}

    keyword = report["keyword"]
    assert keyword["type"] == "KeywordOnly" and keyword["boom_class"]
    assert keyword["str"] == "name: too long" and keyword["attrs"] == {"field": "'name'"}

    custom = report["reduce"]
    assert custom["type"] == "Custom" and custom["boom_class"]
    assert custom["attrs"] == {"code": "3", "via_reduce": "True"}  # made by its __reduce__

    group = report["group"]
    assert group["type"] == "ExceptionGroup" and group["str"] == "two failed (2 sub-exceptions)"
    first, second = group["members"]
    assert first["type"] == "BadInput" and first["boom_class"] and first["attrs"] == {"code": "1"}
    assert second["type"] == "KeywordOnly" and second["str"] == "f: second member"
    assert f"boom.py:{line['member0']}" in first["frames"]
    assert f"boom.py:{line['member1']}" in second["frames"]
    assert "second member" in group["remote"]

    cause = report["cause"]
    assert cause["type"] == "BadInput" and cause["str"] == "wrapped"
    assert cause["cause"]["type"] == "KeyError"
    assert f"boom.py:{line['cause-inner']}" in cause["cause"]["frames"]
    assert "direct cause" in cause["printed"]

    context = report["context"]
    assert context["type"] == "KeywordOnly" and context["cause"] is None  # a RemoteTraceback
    assert context["context"]["type"] == "ValueError"
    assert f"boom.py:{line['context-inner']}" in context["context"]["frames"]

    assert report["notes"]["type"] == "BadInput"
    assert report["notes"]["notes"] == ["check the input file"]

    locked = report["lock"]
    assert locked["type"] == "Locked" and locked["boom_class"] and locked["attrs"] == {"kept": "7"}
    assert len(locked["notes"]) == 1
    assert "lock (a _thread.lock does not pickle)" in locked["notes"][0]

    missing = report["missing"]
    assert missing["type"] == "RemoteError"
    assert missing["str"] == "boom.OnlyOnWorker: made on the worker"
    assert missing["why"] == "class boom.OnlyOnWorker does not exist on the Main"
    assert "Not rebuilt as itself: class boom.OnlyOnWorker does not exist" in missing["printed"]
    assert f'boom.py", line {line["missing"]}, in fail' in missing["printed"]

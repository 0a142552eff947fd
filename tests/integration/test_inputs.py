"""A ``Response`` passed as an argument stands for its value, on real daemons."""

from __future__ import annotations

from collections.abc import Callable

from tests.helpers import Worker, Workspace

SCRIPT = """\
import os, time
import distrib
from distrib import distributed

@distributed
def f(x):
    if x < 0:
        raise ValueError(f"negative {x}")
    time.sleep(0.1)
    return x * 10

@distributed
def add(a, b=0):
    return a + b

if __name__ == "__main__":
    print(add(f(1), f(2)).unwrap(timeout=60))
    print(add(f(1), b=f(3)).unwrap(timeout=60))
    total = f(0)
    for i in range(1, 11):  # a chain: each call waits for the one before
        total = add(total, f(i))
    print(total.unwrap(timeout=60))
    try:
        add(f(-1), f(2)).unwrap(timeout=60)
    except distrib.InputFailed as exc:
        print("InputFailed", exc)
        cause = exc.__cause__
        print("cause", type(cause).__name__, cause)
        print("remote traceback", type(cause.__cause__).__name__,
              "line" in str(cause.__cause__))
    waits = add(f(5), 1)
    print("cancelled", waits.cancel(), waits.cancelled())
"""


def test_responses_as_arguments_pass_their_values_and_errors_fail_the_call(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", SCRIPT)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[:3] == ["30", "40", str(sum(i * 10 for i in range(11)))]
    assert lines[3].startswith("InputFailed argument 0 of add (f#") and lines[3].endswith(
        "failed: ValueError: negative -1; add was not called"), lines[3]
    assert lines[4:] == ["cause ValueError negative -1", "remote traceback RemoteTraceback True",
                         "cancelled True True"]

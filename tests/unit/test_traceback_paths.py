"""A task's error names the workspace's files as the Main has them, its causes' frames too."""

from __future__ import annotations

import traceback

import pytest

from distrib import _runtime
from distrib._sealed import dumps_error, error_info, loads_error

SOURCE = """\
def f():
    try:
        1 / 0
    except ZeroDivisionError as exc:
        raise ValueError("v") from exc
"""


def test_frames_and_text_move_from_the_workers_folder_to_the_workspace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    namespace: dict[str, object] = {}
    exec(compile(SOURCE, "/worker/envs/abc/pkg/mod.py", "exec"), namespace)
    try:
        namespace["f"]()  # type: ignore[operator]
    except ValueError as exc:
        caught = exc
    monkeypatch.setattr(_runtime, "shipped_as", "/worker/envs/abc")  # in the executor
    info, frames = error_info(caught), dumps_error(caught)
    assert info["root"] == "/worker/envs/abc"
    monkeypatch.setattr(_runtime, "shipped_as", "")  # on the Main
    monkeypatch.setattr(_runtime, "shipped_root", "/home/me/project")
    text = "".join(traceback.format_exception(loads_error(frames, info)))
    assert "/worker/envs" not in text
    for line in (3, 5):  # in the rebuilt frames of the error and its cause, and in the text
        assert text.count(f'File "/home/me/project/pkg/mod.py", line {line}, in f') == 2, text
    monkeypatch.setattr(_runtime, "shipped_root", None)  # nothing shipped: left as they are
    text = "".join(traceback.format_exception(loads_error(frames, info)))
    assert text.count('File "/worker/envs/abc/pkg/mod.py"') == 4

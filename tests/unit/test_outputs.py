"""The Main's side of ``outputs=``: paths are checked as strictly as manifests."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from distrib import WorkspaceError
from distrib.main._outcomes import Outputs


@pytest.mark.parametrize("path", ["../up.txt", "/abs.txt", "a/../../up.txt", "a\\b.txt", ""])
def test_a_bad_path_writes_nothing(tmp_path: Path, path: str) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    with pytest.raises(WorkspaceError, match="nothing was written"):
        Outputs(root).write("task f#1", [("fine.txt", b"x"), (path, b"y")], ("*",))
    assert list(root.iterdir()) == []


def test_a_link_out_of_the_workspace_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "results").symlink_to(outside)
    with pytest.raises(WorkspaceError, match="through a link"):
        Outputs(root).write("task f#1", [("results/x.txt", b"x")], ("results/**",))
    assert list(outside.iterdir()) == []


def test_the_later_of_two_writers_wins_with_a_warning(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    outputs = Outputs(tmp_path)
    outputs.write("task f#1", [("sub/out.txt", b"one")], ("sub/",))
    with caplog.at_level(logging.WARNING, logger="distrib"):
        outputs.write("task f#2", [("sub/out.txt", b"two")], ("sub/",))
    assert (tmp_path / "sub" / "out.txt").read_bytes() == b"two"
    assert "written by task f#1 and now by task f#2" in caplog.text


def test_a_path_the_task_did_not_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="do not name; nothing was written"):
        Outputs(tmp_path).write("task f#1", [("results/a.txt", b"x"), (".git/hooks/x", b"y")],
                                ("results/**",))
    assert list(tmp_path.iterdir()) == []


def test_an_output_file_keeps_the_mode_the_task_gave_it_under_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        Outputs(tmp_path).write("task f#1", [("a.sh", b"x", 0o755), ("b", b"y", 0o600),
                                             ("c", b"z", 0o777), ("d", b"w")], ("*",))
    finally:
        os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.sh": 0o755, "b": 0o600, "c": 0o755, "d": 0o644}

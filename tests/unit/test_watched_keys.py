"""The authorized-keys files that the worker, the Main and the relay read again when they change."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from distrib._errors import ConfigError
from distrib.wire import _keys

A = _keys.generate().public
B = _keys.generate().public


def test_a_changed_file_is_read_again_and_a_broken_one_keeps_the_previous_list(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.authorized"
    path.write_text(f"{A} first\n")
    watched = _keys.Watched(path, _keys.read_authorized, "authorized keys")
    assert watched.value == {A: "first"} and not watched.reload()

    # Same time stamp, other size: still a change (file times tick coarsely).
    stamp = path.stat().st_mtime_ns
    path.write_text(f"{A} first\n{B} second\n")
    os.utime(path, ns=(stamp, stamp))
    assert watched.reload() and watched.value == {A: "first", B: "second"}

    with caplog.at_level(logging.WARNING, logger="distrib"):
        path.write_text("not-a-key\n")
        assert not watched.reload() and not watched.reload()
    assert watched.value == {A: "first", B: "second"}
    said = [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()]
    assert len(said) == 1 and "keys.authorized line 1" in said[0], said

    path.unlink()
    assert not watched.reload() and watched.value == {A: "first", B: "second"}
    path.write_text(f"{B} back\n")
    assert watched.reload() and watched.value == {B: "back"}
    watched.changed()  # (SIGHUP: read again though nothing changed)
    assert watched.reload()


def test_a_missing_or_broken_file_at_start_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.authorized"):
        _keys.Watched(tmp_path / "missing.authorized", _keys.read_authorized, "authorized keys")
    (tmp_path / "bad.authorized").write_text("nope\n")
    with pytest.raises(ConfigError, match="bad.authorized line 1"):
        _keys.Watched(tmp_path / "bad.authorized", _keys.read_authorized, "authorized keys")

"""The copy fallback of private task writes, on its own (the overlay is tested with daemons)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from distrib.executor._isolation import Copies


@pytest.fixture
def keep_cwd() -> Iterator[None]:
    here = os.getcwd()
    yield
    os.chdir(here)


def test_each_task_gets_a_copy_renewed_after_it_changed(tmp_path: Path, keep_cwd: None) -> None:
    env = tmp_path / "env"
    (env / "data").mkdir(parents=True)
    (env / "data" / "input.txt").write_text("41")
    iso = Copies(env, tmp_path / "scratch")
    iso.enter()
    first = Path.cwd()
    Path("data/input.txt").write_text("42")
    Path("new.txt").write_text("x")
    iso.enter()
    assert Path.cwd() != first and not first.exists()
    assert Path("data/input.txt").read_text() == "41" and not Path("new.txt").exists()
    second = Path.cwd()
    iso.enter()  # nothing changed: the same folder serves the next task
    assert Path.cwd() == second
    os.remove("data/input.txt")
    iso.enter()
    assert Path("data/input.txt").read_text() == "41"
    assert (env / "data" / "input.txt").read_text() == "41"  # the shared tree never changed

"""The copy fallback of private task writes, on its own (the overlay is tested with daemons)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
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


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.read_bytes() if p.is_file() else b"")
            for p in sorted(root.rglob("*"))}


WRITES: dict[str, Callable[[], object]] = {
    "new file in an existing folder": lambda: Path("data/one/new.txt").write_text("x"),
    "overwrite, same size": lambda: Path("data/one/deep.txt").write_text("DEEP"),
    "delete": lambda: os.remove("data/one/deep.txt"),
    "rename": lambda: os.rename("data/one/deep.txt", "data/moved.txt"),
    "remove a folder": lambda: shutil.rmtree("data/one"),
    "chmod a file": lambda: os.chmod("data/one/deep.txt", 0o600),
    "chmod a folder": lambda: os.chmod("data/one", 0o700),
    "chmod the working folder": lambda: os.chmod(".", 0o700),
}


@pytest.mark.parametrize("kind", list(WRITES))
def test_the_next_task_gets_a_fresh_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         kind: str) -> None:
    env = tmp_path / "env"
    (env / "data" / "one").mkdir(parents=True)
    (env / "data" / "one" / "deep.txt").write_text("deep")
    (env / "top.txt").write_text("top")
    monkeypatch.chdir(tmp_path)
    copies = Copies(env, tmp_path)
    copies.enter()
    shipped = _tree(copies.folder)
    assert shipped == _tree(env)
    WRITES[kind]()
    copies.enter()
    assert _tree(copies.folder) == shipped and os.stat(".").st_mode == os.stat(env).st_mode

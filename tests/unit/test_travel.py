"""How the Main decides what workers can import by name, which project pytest ships, and
whose fault a missing module is (no processes, no sockets)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from distrib import _runtime
from distrib.main import _shipping
from distrib.main._outcomes import environment_problem, unshipped_module
from distrib.wire._record import ErrorRecord


def test_a_module_resolves_in_the_workspace_only_at_the_path_its_name_gives(
        tmp_path: Path) -> None:
    root = str(tmp_path)
    (tmp_path / "pkg").mkdir()
    assert _runtime.file_resolves("helper", f"{root}/helper.py", root)
    assert _runtime.file_resolves("pkg.mod", f"{root}/pkg/mod.py", root)
    assert _runtime.file_resolves("pkg", f"{root}/pkg/__init__.py", root)
    # pytest imports tests/test_x.py as test_x, from tests/ put on sys.path: not on workers.
    assert not _runtime.file_resolves("test_x", f"{root}/tests/test_x.py", root)
    assert not _runtime.file_resolves("helper", f"{root}/helper.py", None)
    # Executors import the main script by its path, under another name.
    assert _runtime.file_resolves(_runtime.MAIN_ALIAS, f"{root}/scripts/run.py", root)
    assert _runtime.file_resolves("json", sys.modules["json"].__file__ or "", None)


def test_pytest_ships_its_root_when_it_is_a_project(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("")
    monkeypatch.chdir(tmp_path / "tests")
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_a.py::test_one (call)")
    assert _shipping.pytest_project() is None  # no marker at its root: not a project
    (tmp_path / "conftest.py").write_text("")
    assert _shipping.pytest_project() == tmp_path.resolve()
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    assert _shipping.pytest_project() is None  # not running a test


def test_a_local_module_missing_on_a_worker_is_the_calls_fault(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "local_only_mod.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    missing = ErrorRecord("builtins.ModuleNotFoundError",
                          "No module named 'local_only_mod'").to_wire()
    assert environment_problem(missing) == ""
    error = unshipped_module(missing, "task f#1")
    assert error is not None
    assert str(error).startswith(
        f"task f#1 needs module local_only_mod ({tmp_path / 'local_only_mod.py'}), which "
        "workers cannot import: it is not installed and no workspace is shipped")
    # An installed module a worker lacks is its environment's problem, not the call's.
    json_missing = ErrorRecord("builtins.ModuleNotFoundError", "No module named 'json'")
    assert unshipped_module(json_missing.to_wire(), "task f#1") is None
    assert "json" in environment_problem(json_missing.to_wire())

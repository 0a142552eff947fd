"""The environment description a Main sends in its Hello, and how the Main makes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from distrib import ConfigError, ProtocolError
from distrib.main._environment import describe, _workspace_imports
from distrib.main._outcomes import environment_problem
from distrib.wire._envspec import EnvSpec, Wheel, decode
from distrib.wire._record import ErrorRecord
from distrib.workspace._manifest import scan

SPEC = EnvSpec("3.11", (("numpy", "2.4.6"), ("pandas", "2.2.3")),
               (Wheel("localpkg", "0.1", "ab" * 32, 1234),), None)


def test_a_description_round_trips_and_is_named_by_its_bytes() -> None:
    raw = SPEC.encode()
    back = decode(raw)
    assert back == SPEC and back.env_id == SPEC.env_id
    assert EnvSpec("3.11", tuple(reversed(SPEC.pins)), SPEC.wheels).env_id == SPEC.env_id
    assert EnvSpec("3.12", SPEC.pins, SPEC.wheels).env_id != SPEC.env_id
    assert SPEC.summary() == "numpy 2.4.6, pandas 2.2.3, localpkg 0.1 (shipped)"
    assert EnvSpec("3.11").empty and EnvSpec("3.11").summary() == "no packages"


@pytest.mark.parametrize("value,why", [
    ([2, "3.11", [], [], None], "version"),
    ([1, "2.7", [], [], None], "python"),
    ([1, "3.11", [["../evil", "1"]], [], None], "package pin"),
    ([1, "3.11", [["ok", "1 ; rm -rf /"]], [], None], "package pin"),
    ([1, "3.11", [["ok"]], [], None], "package pin"),
    ([1, "3.11", [], [["w", "1", "nothex" * 9, 10]], None], "wheel"),
    ([1, "3.11", [], [["w", "1", "ab" * 32, 0]], None], "wheel"),
    ([1, "3.11", [], [["w", "1", "ab" * 32, 1 << 40]], None], "wheel"),
    ([1, "3.11", [["p", "1"]] * 5000, [], None], "pins"),
    ([1, "3.11", [], [], ["setup.py", "x"]], "requirements file"),
    ([1, "3.11", [], [], ["requirements.txt", "x" * (1 << 20)]], "requirements file"),
    ([1, "3.11", [], []], "not a description"),
])
def test_a_bad_description_is_a_protocol_error_naming_the_field(value: list[object],
                                                                 why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode(msgpack.packb(value))


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_a_protocol_error(raw: bytes) -> None:
    try:
        decode(raw)
    except ProtocolError:
        pass


def test_the_workspace_imports_found_without_parsing(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(
        "import os, numpy.linalg as la, json\n"
        "from pandas.core import frame\n"
        "from . import sibling\n"
        "from .pkg import thing\n"
        "    import scipy  # (inside a function)\n"
        "# import commented\n"
        "x = 'import notreally'\n")
    dist = scan(tmp_path, tmp_path / "main.py", (), tmp_path / "hashes.msgpack")
    assert _workspace_imports(dist) == {"os", "numpy", "json", "pandas", "scipy"}


def test_none_and_a_requirements_file_replace_what_is_installed(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import numpy\n")
    (tmp_path / "requirements.txt").write_text("numpy==2.0.0\n")
    dist = scan(tmp_path, tmp_path / "main.py", (), tmp_path / "hashes.msgpack")
    python = "%d.%d" % sys.version_info[:2]
    assert describe("none", None, dist, tmp_path / "cache") == (EnvSpec(python), {})
    spec, wheels = describe("auto", tmp_path / "requirements.txt", dist, tmp_path / "cache")
    assert spec.file == ("requirements.txt", "numpy==2.0.0\n") and not spec.pins
    with pytest.raises(ConfigError, match="no-such.txt"):
        describe("auto", tmp_path / "no-such.txt", dist, tmp_path / "cache")
    for line in ("-e ../localpkg", "./pkg", "lib @ file:///tmp/lib", "/abs/pkg.whl"):
        (tmp_path / "local.txt").write_text(f"numpy==2.0.0\n{line}\n")
        with pytest.raises(ConfigError, match="names a path on this machine"):
            describe("auto", tmp_path / "local.txt", dist, tmp_path / "cache")


def test_what_counts_as_a_worker_lacking_the_environment() -> None:
    assert "could not build" in environment_problem(ErrorRecord(
        "distrib.DependencyError", "worker w could not build ...").to_wire())
    assert "json" in environment_problem(ErrorRecord(
        "builtins.ModuleNotFoundError", "No module named 'json'").to_wire())
    # A module this Main cannot import either is the task's own error, not the worker's.
    assert environment_problem(ErrorRecord(
        "builtins.ModuleNotFoundError", "No module named 'no_such_module_x'").to_wire()) == ""
    assert environment_problem(ErrorRecord("builtins.ValueError", "bad").to_wire()) == ""


def test_a_kept_description_is_found_without_reading_metadata_or_unchanged_modules(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distrib.main import _environment

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "main.py").write_text("import msgspec\n")
    (ws / "data.txt").write_text("1\n")
    monkeypatch.syspath_prepend(str(ws))  # (as a script's own folder is)
    cache = tmp_path / "cache"

    def dist() -> Any:
        return scan(ws, ws / "main.py", (), tmp_path / "hashes.msgpack")

    first = describe("auto", None, dist(), cache)
    assert "msgspec" in dict(first[0].pins)

    def never(*args: object) -> Any:
        raise AssertionError("read again")

    # The same modules (a data file edited, a file added beside the script: its folder's
    # time moved): neither the modules nor any metadata are read.
    monkeypatch.setattr(_environment, "_workspace_imports", never)
    monkeypatch.setattr(_environment, "_distributions", never)
    (ws / "data.txt").write_text("2\n")
    (ws / "new.txt").write_text("3\n")
    assert describe("auto", None, dist(), cache)[0].env_id == first[0].env_id
    # A module edited without a new import: its imports are read, no metadata.
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(ws))
    monkeypatch.setattr(_environment, "_distributions", never)
    (ws / "main.py").write_text("import msgspec\nX = 1\n")
    assert describe("auto", None, dist(), cache)[0].env_id == first[0].env_id
    # A new import: described again.
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(ws))
    (ws / "main.py").write_text("import msgspec\nimport psutil\n")
    assert "psutil" in dict(describe("auto", None, dist(), cache)[0].pins)


def test_the_variables_read_by_name_are_kept_by_the_modules_hashes(tmp_path: Path) -> None:
    from distrib.main._shipping import forwarded_environ

    (tmp_path / "main.py").write_text("import os\nos.environ['A']\n")
    environ = {"A": "1", "B": "2", "SECRET": "3"}
    cache = tmp_path / "cache"

    def dist() -> Any:
        return scan(tmp_path, tmp_path / "main.py", (), tmp_path / "hashes.msgpack")

    first = dist()
    assert forwarded_environ(first, (), environ, cache) == {"A": "1"}
    (tmp_path / "main.py").write_text("import os\nos.getenv('B')\n")
    # The same modules' hashes: the answer kept (the files are not read again)...
    assert forwarded_environ(first, (), environ, cache) == {"A": "1"}
    # ... changed ones: read.
    assert forwarded_environ(dist(), (), environ, cache) == {"B": "2"}
    assert forwarded_environ(dist(), ("S*",), environ) == {"B": "2", "SECRET": "3"}


def test_each_way_of_reading_a_variable_by_name_is_found_and_longer_names_are_not() -> None:
    from distrib.main._shipping import _names_read

    source = b"""import os
from os import environ, getenv
a = os.environ["A1"]; b = os.environ.get('B_2'); c = os.getenv("C")
d = environ [ "D" ]; e = getenv( 'E' ); f = environ.get("F")
g = myenviron["NOT1"]; h = xgetenv("NOT2"); i = os.environ[key]
"""
    assert _names_read(source) == {"A1", "B_2", "C", "D", "E", "F"}


def test_a_workspace_importing_nothing_installed_reads_no_metadata(tmp_path: Path) -> None:
    # A fresh interpreter, as a Main is: what the test run imported must not hide an import.
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "main.py").write_text("import json\nimport helper\nfrom distrib import distributed\n")
    (ws / "helper.py").write_text("import os\n")
    code = f"""
import sys
from pathlib import Path
before = set(sys.modules)  # (as a session counts what it imports as distrib's own)
from distrib import _runtime
from distrib.main._environment import describe
from distrib.workspace._manifest import scan
ws = Path({str(ws)!r})
scan(ws, ws / "main.py")
_runtime.own_modules.update(set(sys.modules) - before)
spec, wheels = describe("auto", None, scan(ws, ws / "main.py"), Path({str(tmp_path)!r}))
assert (spec, wheels) == describe("none", None, scan(ws, ws / "main.py"), ws), spec
read = sorted(m for m in ("distrib._packages", "importlib.metadata") if m in sys.modules)
assert not read, read
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr

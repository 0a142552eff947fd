"""The SSH launcher's pure pieces: host names as ssh takes them, the [cluster] section, the
remote shell's search for a Python, and the wheels a Main sends (built here, unpacked by the
remote bootstrap's own installer into a venv that imports them)."""

from __future__ import annotations

import importlib.metadata as md
import os
import shlex
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import distrib
from distrib import ConfigError
from distrib._config import SSHCluster, load
from distrib.launch import _remote, _ssh, _wheels


@pytest.mark.parametrize("given, expected", [
    ("lab1", ("lab1", None)),
    ("me@lab1", ("me@lab1", None)),
    ("me@lab1:2222", ("me@lab1", "2222")),
    ("[fd00::7]:2222", ("fd00::7", "2222")),
    ("fd00::7", ("fd00::7", None)),
])
def test_hosts_as_ssh_takes_them(given: str, expected: tuple[str, str | None]) -> None:
    assert _ssh.split_host(given) == expected


def test_a_cluster_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "distrib.toml").write_text(textwrap.dedent("""
        [cluster]
        ssh = ["lab1", "me@lab2:2222"]
        threads = 8
        worker_args = ["--no-sandbox"]
        """))
    assert load({}).cluster == SSHCluster(("lab1", "me@lab2:2222"), 8, None, (),
                                          ("--no-sandbox",))
    (tmp_path / "distrib.toml").write_text("[cluster]\nthreads = 8\n")
    with pytest.raises(ConfigError, match=r"\[cluster\]: needs ssh = "):
        load({})
    (tmp_path / "distrib.toml").write_text("[cluster]\nssh = 'lab1'\n")
    with pytest.raises(ConfigError, match=r"\[cluster\] ssh: expected a list of strings"):
        load({})


def test_ssh_takes_a_list_of_hosts() -> None:
    assert distrib.SSH(["lab1"], threads=2).hosts == ["lab1"]
    with pytest.raises(ConfigError, match="a list of host names"):
        distrib.SSH("lab1")
    with pytest.raises(ConfigError, match="a positive number"):
        distrib.SSH(["lab1"], threads=0)


def test_no_python_of_this_version_is_said_by_the_exit_status() -> None:
    done = subprocess.run(shlex.split(_ssh.remote_command("2.1")), capture_output=True,
                          timeout=30)
    assert done.returncode == _ssh.NO_PYTHON


def test_the_wheels_make_a_venv_that_imports_them(tmp_path: Path) -> None:
    own = _wheels.distrib_wheel(tmp_path / "cache")
    assert _wheels.distrib_wheel(tmp_path / "cache") == own  # (the same files, the same wheel)
    tblib = _wheels.repacked(md.distribution("tblib"), tmp_path / "cache")
    with zipfile.ZipFile(tblib.path) as archive:
        names = archive.namelist()
    assert "tblib/__init__.py" in names and any(n.endswith(".dist-info/RECORD") for n in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    for wheel in (own, tblib):
        _remote.install_wheel(wheel.path, venv)
    done = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import importlib.util, tblib; "
                           "print(importlib.util.find_spec('distrib').origin)"],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0 and str(venv) in done.stdout, done.stderr


def test_what_distrib_requires_is_sent_once_each() -> None:
    names = [d.metadata["Name"].lower() for d in _wheels.requirements(["distrib"])]
    assert len(names) == len(set(names)) and {"distrib", "pyzmq", "msgspec"} <= set(names)


def test_distribs_wheel_takes_its_metadata_from_an_egg_info_record_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # setuptools' `develop` (or an older editable install) leaves distrib.egg-info beside the
    # package, found first: its PKG-INFO is the metadata (the wheel's METADATA was empty, and
    # every host's executors died importing distrib).
    here = md.distribution("distrib")
    pkg_info = here.read_text("METADATA") or here.read_text("PKG-INFO")
    assert pkg_info
    egg = tmp_path / "src" / "distrib.egg-info"
    egg.mkdir(parents=True)
    (egg / "PKG-INFO").write_text(pkg_info)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    assert md.distribution("distrib").read_text("METADATA") is None  # (the egg-info is found)
    with zipfile.ZipFile(_wheels.distrib_wheel(tmp_path / "cache").path) as archive:
        metadata = next(archive.read(n) for n in archive.namelist()
                        if n.endswith(".dist-info/METADATA")).decode()
    assert metadata == pkg_info
    (egg / "PKG-INFO").unlink()
    with pytest.raises(distrib.LaunchError, match="neither METADATA nor PKG-INFO"):
        _wheels.distrib_wheel(tmp_path / "cache2")

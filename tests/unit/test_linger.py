"""The linger setting, and the lingering daemon's private folder and locks (no daemon here:
the integration tests start real ones)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from distrib import ConfigError
from distrib._config import Overrides, load
from distrib._linger import Place, key, lingering, private, root, users_gone
from distrib._values import duration


@pytest.mark.parametrize(("raw", "seconds"), [
    ("10m", 600.0), ("30s", 30.0), ("2h", 7200.0), ("1.5m", 90.0), (45, 45.0), ("0", 0.0),
    ("off", 0.0), (False, 0.0), ("2", 2.0)])
def test_a_linger_is_a_duration(raw: object, seconds: float) -> None:
    assert duration("linger", raw) == seconds


@pytest.mark.parametrize("raw", ["soon", "-1m", "10x", True, "inf", ""])
def test_a_linger_that_is_no_duration_names_the_setting(raw: object) -> None:
    with pytest.raises(ConfigError, match=r"DISTRIB_LINGER=.*duration"):
        duration("DISTRIB_LINGER", raw)


def test_linger_comes_from_the_file_the_environment_and_init(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load({}).linger == 0.0  # (off by default: the daemon stops with its script)
    (tmp_path / "distrib.toml").write_text('[local]\nlinger = "10m"\n')
    assert load({}).linger == 600.0
    assert load({"DISTRIB_LINGER": "30s"}).linger == 30.0
    assert load({"DISTRIB_LINGER": "30s"}, Overrides(linger=0)).linger == 0.0
    (tmp_path / "distrib.toml").write_text('[local]\nlinger = "later"\n')
    with pytest.raises(ConfigError, match=r"\[local\] linger"):
        load({})


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "run"
    where.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(where))
    return where


def test_each_interpreter_slot_count_and_cache_has_its_daemon(tmp_path: Path) -> None:
    assert key(2, tmp_path) == key(2, tmp_path)
    assert len({key(2, tmp_path), key(3, tmp_path), key(2, tmp_path / "other")}) == 3


def test_a_folder_others_can_enter_is_not_used(runtime: Path) -> None:
    shared = runtime / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    with pytest.raises(ConfigError, match="not a private folder of this user"):
        private(shared)
    link = runtime / "link"
    link.symlink_to(runtime)
    with pytest.raises(ConfigError, match="not a private folder"):
        private(link)


@pytest.mark.skipif(os.geteuid() != 0, reason="a folder of another user is made as root")
def test_another_users_runtime_folder_is_not_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = tmp_path / "theirs"  # (XDG_RUNTIME_DIR kept by sudo, say)
    theirs.mkdir()
    os.chown(theirs, 1, 1)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(theirs))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert root() == tmp_path / f"distrib-{os.geteuid()}"
    assert not (theirs / "distrib").exists()


def test_the_daemon_leaves_only_when_no_main_holds_it(runtime: Path, tmp_path: Path) -> None:
    place = Place(2, tmp_path / "cache")
    assert oct(os.stat(place.folder).st_mode & 0o777) == "0o700"
    assert place.address == f"ipc://{place.folder}/worker.sock"
    assert place.attach() is None  # no daemon yet: this Main starts one
    (place.folder / "worker.sock").touch()
    place.started(os.getpid())  # (a live process stands in for the daemon)
    place.release_start()
    assert lingering() == [(place.address, os.getpid())]
    assert users_gone(place.users) is None  # a Main uses it
    other = Place(2, tmp_path / "cache")
    assert other.attach() == os.getpid()  # a second Main attaches
    place.leave()
    assert users_gone(place.users) is None  # the second still uses it
    other.leave()
    held = users_gone(place.users)
    assert held is not None
    os.close(held)


def test_a_stale_record_is_not_trusted(runtime: Path, tmp_path: Path) -> None:
    place = Place(2, tmp_path / "cache")
    (place.folder / "worker.sock").touch()
    (place.folder / "daemon.pid").write_text(f"{os.getpid()} 12.5\n")  # (its pid, reused)
    assert lingering() == []
    assert place.attach() is None
    assert not (place.folder / "worker.sock").exists()  # removed, for a new daemon
    place.leave()

"""What a sandbox holds, as the daemon lists it (the sandboxes themselves are tested in
tests/integration/test_sandbox.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from distrib.worker import _sandbox


def test_no_read_only_path_holds_the_workers_cache(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "project" / "cache"
    cache.mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(tmp_path), str(tmp_path / "project"), *sys.path])
    reads = _sandbox.reads(None, cache)
    assert Path(sys.prefix) in reads
    assert not any(p == cache or p in cache.parents for p in reads)


def test_a_venv_linked_from_inside_a_bound_folder_is_bound_where_it_leads(
        tmp_path: Path, monkeypatch) -> None:
    project, real = tmp_path / "project", tmp_path / "elsewhere" / "venv"
    project.mkdir()
    real.mkdir(parents=True)
    (project / ".venv").symlink_to(real)
    monkeypatch.setattr(sys, "prefix", str(project / ".venv"))
    monkeypatch.setattr(sys, "path", [str(project), *sys.path])
    covered = _sandbox._covering(_sandbox.reads(None, tmp_path / "cache"))
    assert project in covered and real in covered


def test_the_mounts_are_the_system_the_tree_twice_and_the_scratch(tmp_path: Path) -> None:
    env, scratch, lib = tmp_path / "env", tmp_path / "scratch", tmp_path / "lib"
    for folder in (env, scratch, lib / "inner"):
        folder.mkdir(parents=True)
    box = _sandbox.Box(env, scratch, (lib, lib / "inner", Path("/usr/lib")), "none", False)
    mounts = _sandbox._mounts(box)
    assert mounts[:3] == [["proc", "", "/proc"], ["dev", "", "/dev"],
                          ["rw", str(scratch / "tmp"), "/tmp"]]  # (on disk: counted)
    assert ["ro", str(lib), str(lib)] in mounts  # (once: what it holds is not bound again)
    assert not any(target in (str(lib / "inner"), "/usr/lib") for _, _, target in mounts)
    assert ["ro", str(env), str(env)] in mounts and ["ro", str(env), _sandbox.LOWER] in mounts
    assert mounts[-1] == ["rw", str(scratch), str(scratch)]  # (no /dev/shm: not shared)
    assert "--unshare-net" not in _sandbox._bwrap_args(mounts, box, env)  # (--unshare-all)
    loopback = _sandbox.Box(env, scratch, (), "loopback", True)
    assert "--share-net" in _sandbox._bwrap_args(_sandbox._mounts(loopback), loopback, env)


def test_the_probe_started_early_answers_what_detect_would(monkeypatch) -> None:
    found = _sandbox.Sandboxes("namespaces")
    monkeypatch.setattr(_sandbox, "detect", lambda: found)
    probe = _sandbox.Probe()
    assert probe.result() is found
    probe.join()  # (again, as the command's end does: nothing left to wait for)

    def fails() -> _sandbox.Sandboxes | None:
        raise OSError("no /tmp")

    monkeypatch.setattr(_sandbox, "detect", fails)
    with pytest.raises(OSError, match="no /tmp"):  # (where the daemon asks, as detect() did)
        _sandbox.Probe().result()

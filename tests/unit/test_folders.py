"""Folders of a workspace that hold no file (an empty ``results/``): listed in its manifest,
checked as its files' paths are, and made in a worker's tree."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgpack
import pytest

from distrib import WorkspaceError
from distrib.workspace._manifest import Entry, decode_manifest, encode_manifest, scan
from distrib.workspace._store import Store

DIGEST = "0" * 64


def test_a_scan_lists_the_folders_that_hold_no_file_and_only_those(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("x")
    (tmp_path / "results").mkdir()  # empty
    (tmp_path / "runs" / "a" / "b").mkdir(parents=True)  # only the deepest is listed
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("y")  # holds a file: not listed
    (tmp_path / "out").mkdir()  # excluded
    (tmp_path / ".gitignore").write_text("out/\n")
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / "pyvenv.cfg").write_text("")  # a venv: not entered
    dist = scan(tmp_path, tmp_path / "main.py", cache_file=tmp_path.parent / "cache")
    assert dist.folders == ("results", "runs/a/b")
    assert decode_manifest(dist.encoded, dist.dist_id).folders == ["results", "runs/a/b"]
    # A rerun (the listing kept) finds them again; one that gets a file leaves the list.
    again = scan(tmp_path, tmp_path / "main.py", cache_file=tmp_path.parent / "cache")
    assert again.folders == dist.folders and again.dist_id == dist.dist_id
    (tmp_path / "results" / "r.txt").write_text("r")
    assert scan(tmp_path, tmp_path / "main.py").folders == ("runs/a/b",)


def test_a_workspace_without_empty_folders_keeps_its_manifest_and_id() -> None:
    entries = [Entry("a.py", 1, False, DIGEST)]
    data, dist_id = encode_manifest("a.py", entries)
    assert msgpack.unpackb(data) == {"main": "a.py", "entries": [["a.py", 1, False, DIGEST]]}
    assert encode_manifest("a.py", entries, []) == (data, dist_id)
    with_folder, other = encode_manifest("a.py", entries, ["results"])
    assert other != dist_id and decode_manifest(with_folder, other).folders == ["results"]


@pytest.mark.parametrize("folders", [
    ["../up"], ["/abs"], ["a/../../b"], ["a.py"], ["a.py/inside"], ["x", "x"], "notalist",
    [3], ["c:/d"],
])
def test_a_manifests_folders_are_checked_as_its_paths_are(folders: object) -> None:
    raw = msgpack.packb({"main": None, "entries": [["a.py", 1, False, DIGEST]],
                         "folders": folders})
    with pytest.raises(WorkspaceError):
        decode_manifest(raw, hashlib.sha256(raw).hexdigest())


def test_an_unknown_key_in_a_manifest_is_refused() -> None:
    raw = msgpack.packb({"main": None, "entries": [], "links": ["x"]})
    with pytest.raises(WorkspaceError, match="must be a map"):
        decode_manifest(raw, hashlib.sha256(raw).hexdigest())


def test_a_worker_tree_has_the_folders_made(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    data = b"x = 1\n"
    digest = hashlib.sha256(data).hexdigest()
    store.put(digest, data)
    env = store.materialize("d1", [Entry("m.py", len(data), False, digest)],
                            folders=["results", "runs/a/b"])
    assert (env / "results").is_dir() and (env / "runs" / "a" / "b").is_dir()
    assert (env / "m.py").read_bytes() == data

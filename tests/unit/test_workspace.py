"""Manifest scanning and validation, and the worker's blob store."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest

from distrib import WorkspaceError
from distrib.workspace import _manifest
from distrib.workspace._manifest import Entry, decode_manifest, encode_manifest, scan
from distrib.workspace._store import Store
from tests.helpers import rewrite_keeping_size_and_times


def make(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_scan_excludes_vcs_caches_venvs_and_gitignored(tmp_path: Path) -> None:
    make(tmp_path, {
        "main.py": "x", "pkg/mod.py": "y", ".git/HEAD": "z", "pkg/__pycache__/m.pyc": "c",
        "venv/pyvenv.cfg": "", "venv/lib/site.py": "", "out/big.bin": "b", "notes.log": "l",
        ".gitignore": "out/\n*.log\n",
    })
    dist = scan(tmp_path, tmp_path / "main.py")
    assert [e.path for e in dist.entries] == [".gitignore", "main.py", "pkg/mod.py"]
    assert dist.main == "main.py"
    assert dist.dist_id == hashlib.sha256(dist.encoded).hexdigest()


def test_scan_is_deterministic_and_a_change_changes_the_id(tmp_path: Path) -> None:
    make(tmp_path, {"a.py": "1", "b/c.py": "2"})
    first = scan(tmp_path, None, cache_file=tmp_path.parent / "cache.msgpack")
    assert scan(tmp_path, None, cache_file=tmp_path.parent / "cache.msgpack") == first
    (tmp_path / "b" / "c.py").write_text("changed")
    assert scan(tmp_path, None, cache_file=tmp_path.parent / "cache.msgpack").dist_id \
        != first.dist_id


def test_hash_cache_skips_unchanged_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(tmp_path / "ws", {f"f{i}.txt": str(i) for i in range(5)})
    cache = tmp_path / "cache.msgpack"
    scan(tmp_path / "ws", None, cache_file=cache)
    hashed: list[str] = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest",
                        lambda f, d: hashed.append(f.name) or real(f, d))
    (tmp_path / "ws" / "f3.txt").write_text("new content")
    scan(tmp_path / "ws", None, cache_file=cache)
    assert [Path(n).name for n in hashed] == ["f3.txt"]


def _age(root: Path) -> None:
    """Every folder under ``root`` (and it) last changed a minute ago: old enough that a
    scan keeps its listing."""
    past = os.stat(root).st_mtime - 60
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(folder, (past, past))


def test_a_rerun_reuses_the_listing_and_still_sees_files_added_removed_or_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, cache = tmp_path / "ws", tmp_path / "cache.msgpack"
    make(ws, {"main.py": "x", "pkg/mod.py": "y", "pkg/deep/d.py": "z", "out/big.bin": "b",
              "venv/pyvenv.cfg": "", "venv/lib/site.py": "", ".gitignore": "out/\n"})
    _age(ws)
    first = scan(ws, None, cache_file=cache)
    walks: list[Path] = []
    real = _manifest._walk

    def walk(root: Path, *args: Any) -> Any:
        walks.append(root)
        return real(root, *args)

    monkeypatch.setattr(_manifest, "_walk", walk)
    assert scan(ws, None, cache_file=cache) == first
    assert walks == []  # (listed as before: no walk, no pattern matched)
    # Each change below moves its folder's time; each scan after it sees it.
    make(ws, {"pkg/deep/new.py": "n"})
    assert "pkg/deep/new.py" in [e.path for e in scan(ws, None, cache_file=cache).entries]
    assert len(walks) == 1
    (ws / "pkg" / "mod.py").unlink()
    assert "pkg/mod.py" not in [e.path for e in scan(ws, None, cache_file=cache).entries]
    (ws / "venv" / "pyvenv.cfg").unlink()  # (no longer a venv: its files are shipped)
    assert "venv/lib/site.py" in [e.path for e in scan(ws, None, cache_file=cache).entries]
    _age(ws)
    kept = scan(ws, None, cache_file=cache)
    walks.clear()
    (ws / "main.py").write_text("changed in place: its folder's time does not move")
    changed = scan(ws, None, cache_file=cache)
    assert walks == [] and changed.dist_id != kept.dist_id
    assert scan(ws, None, ("pkg/",), cache_file=cache).entries != changed.entries  # (other
    # patterns: walked)


def test_a_listing_of_folders_changed_in_the_last_seconds_is_not_kept(tmp_path: Path) -> None:
    ws, cache = tmp_path / "ws", tmp_path / "cache.msgpack"
    make(ws, {"main.py": "x"})
    scan(ws, None, cache_file=cache)  # (just made: a file added in the same clock tick
    # would not move the folder's time)
    assert "" not in msgpack.unpackb(cache.read_bytes(), raw=False)
    _age(ws)
    scan(ws, None, cache_file=cache)
    assert "" in msgpack.unpackb(cache.read_bytes(), raw=False)


def test_links_leaving_the_tree_are_skipped(tmp_path: Path) -> None:
    make(tmp_path, {"outside.txt": "secret", "ws/a.py": "a"})
    (tmp_path / "ws" / "link.txt").symlink_to(tmp_path / "outside.txt")
    assert [e.path for e in scan(tmp_path / "ws", None).entries] == ["a.py"]


def test_oversized_file_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_manifest, "MAX_FILE_BYTES", 10)
    make(tmp_path, {"big.dat": "x" * 11})
    with pytest.raises(WorkspaceError, match="big.dat"):
        scan(tmp_path, None)


DIGEST = "0" * 64


@pytest.mark.parametrize("path", ["/etc/passwd", "../up", "a/../../b", "a//b", "./a", "c:/x",
                                  "a\\b", "", "a/./b"])
def test_manifest_paths_must_stay_inside(path: str) -> None:
    data, dist_id = encode_manifest(None, [Entry(path, 1, False, DIGEST)])
    with pytest.raises(WorkspaceError):
        decode_manifest(data, dist_id)


def test_manifest_must_hash_to_its_id_and_be_well_formed() -> None:
    data, dist_id = encode_manifest("a.py", [Entry("a.py", 1, False, DIGEST)])
    assert decode_manifest(data, dist_id) == ("a.py", [Entry("a.py", 1, False, DIGEST)], [])
    with pytest.raises(WorkspaceError, match="does not hash"):
        decode_manifest(data, "f" * 64)
    for body in ({"main": None}, {"main": 3, "entries": []},
                 {"main": None, "entries": [["a", -1, False, DIGEST]]},
                 {"main": None, "entries": [["a", 1, False, "nothex"]]},
                 {"main": None, "entries": [["a", 1, False, DIGEST], ["a", 1, False, DIGEST]]},
                 {"main": None, "entries": [["a", 1, False, DIGEST], ["a/b", 1, False, DIGEST]]},
                 {"main": "missing.py", "entries": []}):
        raw = msgpack.packb(body)
        with pytest.raises(WorkspaceError):
            decode_manifest(raw, hashlib.sha256(raw).hexdigest())


def test_store_verifies_blobs_and_builds_environments(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    good = b"print('hi')\n"
    digest = hashlib.sha256(good).hexdigest()
    entries = [Entry("pkg/run.py", len(good), True, digest), Entry("copy.py", len(good), False,
                                                                   digest)]
    assert store.missing(entries) == [digest]
    with pytest.raises(WorkspaceError, match="does not match"):
        store.put_compressed(digest, zlib.compress(b"tampered"))
    with pytest.raises(WorkspaceError, match="not valid zlib"):
        store.put_compressed(digest, b"garbage")
    store.put_compressed(digest, zlib.compress(good))
    assert store.missing(entries) == []
    env = store.materialize("d1", entries)
    assert (env / "pkg" / "run.py").read_bytes() == good
    assert (env / "pkg" / "run.py").stat().st_mode & 0o111
    assert not (env / "copy.py").stat().st_mode & 0o111
    assert env.is_relative_to(tmp_path / "store")


def test_store_evicts_the_least_recently_used_trees_then_unlinked_blobs(tmp_path: Path) -> None:
    import hashlib
    import os
    import zlib

    store = Store(tmp_path / "store", max_bytes=2_500_000)
    for i, name in enumerate(("a", "b", "c", "d")):  # 1 MB each, a tree of links
        raw = os.urandom(1_000_000)
        digest = hashlib.sha256(raw).hexdigest()
        store.put_compressed(digest, zlib.compress(raw, 1), len(raw))
        store.materialize(name, [Entry("data.bin", len(raw), False, digest)])
        store.evict(keep={name, "a"}, keep_blobs=set())
    assert sorted(p.name for p in store.envs.iterdir()) == ["a", "d"]  # "a" was needed
    assert store.usage() <= 2_500_000
    assert len(list(store.blobs.glob("*/*"))) == 2  # the blobs of b and c went with them


def test_distribs_own_cache_inside_the_workspace_is_not_shipped(tmp_path: Path) -> None:
    make(tmp_path, {"main.py": "x", "cache/hashes/h.msgpack": "c", "cache/worker/envs/a": "e"})
    dist = scan(tmp_path, tmp_path / "main.py", skip=(tmp_path / "cache",))
    assert [e.path for e in dist.entries] == ["main.py"]


def test_secret_key_files_are_never_shipped(tmp_path: Path) -> None:
    from distrib.wire import _keys

    make(tmp_path, {"main.py": "x"})
    _keys.write(tmp_path / "main.key", _keys.generate())
    _keys.write(tmp_path / "conf" / "other-name" if (tmp_path / "conf").mkdir() is None
                else tmp_path, _keys.generate())
    dist = scan(tmp_path, tmp_path / "main.py")
    assert [e.path for e in dist.entries] == ["conf/other-name.pub", "main.key.pub", "main.py"]


def test_an_environment_that_drifted_is_detected_and_built_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    entries = _stored(store, {"a.py": b"x = 1\n", "data/input.txt": b"41\n"})
    env = store.materialize("d" * 64, entries)
    assert store.drift("d" * 64) == []
    (env / "data" / "input.txt").write_text("47\n")  # (through the link: its blob too)
    (env / "extra.txt").write_text("x")
    assert store.drift("d" * 64) == ["data/input.txt", "extra.txt"]
    assert store.ensure_whole("d" * 64, entries)
    assert store.missing(entries) == [entries[1].digest]  # its blob was bad too: fetch again
    store.put_compressed(entries[1].digest, zlib.compress(b"41\n"))
    again = store.materialize("d" * 64, entries)
    assert (again / "data" / "input.txt").read_bytes() == b"41\n"
    assert not (again / "extra.txt").exists() and store.drift("d" * 64) == []


def test_deep_paths_are_refused_and_file_folder_clashes_found_in_linear_time() -> None:
    import hashlib

    digest = hashlib.sha256(b"").hexdigest()
    deep = [Entry("/".join(["d"] * 2040) + f"/f{i}", 0, False, digest) for i in range(200)]
    body, dist_id = encode_manifest(None, deep)
    with pytest.raises(WorkspaceError, match="more than 128 folders deep"):
        decode_manifest(body, dist_id)
    # Many entries 100 folders deep decode, and a file that is also a folder is still found.
    wide = [Entry("/".join(["d"] * 100) + f"/f{i}", 0, False, digest) for i in range(5000)]
    body, dist_id = encode_manifest(None, wide)
    assert len(decode_manifest(body, dist_id)[1]) == 5000
    clash = [Entry("a/b", 0, False, digest), Entry("a-x", 0, False, digest),
             Entry("a/b/c", 0, False, digest)]
    body, dist_id = encode_manifest(None, clash)
    with pytest.raises(WorkspaceError, match="'a/b/c' lies under file a/b"):
        decode_manifest(body, dist_id)


def test_a_blob_larger_than_declared_is_refused_without_inflating_it(tmp_path: Path) -> None:
    import hashlib
    import zlib

    store = Store(tmp_path / "store")
    raw = b"\0" * 50_000_000  # 50 MB of zeros: 49 KB compressed
    digest = hashlib.sha256(raw).hexdigest()
    with pytest.raises(WorkspaceError, match="larger than the 1000 bytes"):
        store.put_compressed(digest, zlib.compress(raw), size=1000)
    with pytest.raises(WorkspaceError, match="not the 60000000 its manifest declares"):
        store.put_compressed(digest, zlib.compress(raw), size=60_000_000)
    store.put_compressed(digest, zlib.compress(raw), size=50_000_000)
    assert store.missing([Entry("z", len(raw), False, digest)]) == []


def test_leftovers_of_a_dead_daemon_are_removed_at_start(tmp_path: Path) -> None:
    import os

    store = Store(tmp_path / "store")
    old = store.envs / ".tmp-dead"
    (old / "sub").mkdir(parents=True)
    fresh = store.envs / ".tmp-busy"  # another daemon's, at work right now
    fresh.mkdir()
    os.utime(old, (0, 0))
    store.clean_leftovers()
    assert not old.exists() and fresh.exists()


def test_a_tree_compiles_its_main_script_and_the_modules_its_main_imported() -> None:
    from distrib.workspace._manifest import Entry
    from distrib.workspace._store import _module_files

    paths = ["main.py", "pkg/__init__.py", "pkg/mod.py", "pkg/other.py", "src/lib/__init__.py",
             "src/lib/core.py", "tests/test_x.py", "data.csv"]
    entries = [Entry(p, 1, False, "0" * 64) for p in paths]
    assert _module_files(entries, "main.py", ["pkg.mod", "lib.core", "numpy"]) == [
        "main.py", "pkg/__init__.py", "pkg/mod.py", "src/lib/__init__.py", "src/lib/core.py"]


def test_the_stores_disk_use_skips_files_that_vanish_while_it_is_measured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distrib.workspace import _store

    store = _store.Store(tmp_path / "cache")
    (store.root / "runs").mkdir()
    (store.root / "runs" / "kept").write_bytes(b"x" * 10)
    (store.root / "runs" / "gone").write_bytes(b"y" * 5)
    real = os.lstat

    def lstat(path: str) -> os.stat_result:  # (an executor removed it after the listing)
        if path.endswith("gone"):
            raise FileNotFoundError(path)
        return real(path)

    monkeypatch.setattr(_store.os, "lstat", lstat)
    assert store.usage() == 10


def test_a_tree_rewritten_keeping_sizes_and_times_is_found_by_content(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    entries = _stored(store, {"a.py": b"x = 1\n", "data/input.txt": b"41\n"})
    env = store.materialize("d" * 64, entries, imports=["a"])
    compiled = next((env / "__pycache__").glob("a.*.pyc"))
    shipped = compiled.read_bytes()
    # Another tree linking the same blobs moves their change times: hashed again, still right.
    store.materialize("e" * 64, entries)
    assert store.drift("d" * 64) == []
    # (through the link: its blob too)
    rewrite_keeping_size_and_times(env / "data" / "input.txt", b"66\n")
    assert store.drift("d" * 64) == ["data/input.txt"]  # (this daemon: by its change time)
    fresh = Store(tmp_path / "store")  # a new daemon: every file hashed
    assert fresh.drift("d" * 64) == ["(not checked by this daemon yet)"]
    assert fresh.ensure_whole("d" * 64, entries)
    assert fresh.missing(entries) == [entries[1].digest]  # its blob is fetched again
    fresh.put_compressed(entries[1].digest, zlib.compress(b"41\n"))
    env = fresh.materialize("d" * 64, entries, imports=["a"])
    # A compiled module no manifest names is compiled again by a new daemon, not trusted.
    rewrite_keeping_size_and_times(compiled, b"\0" * len(shipped))
    again = Store(tmp_path / "store")
    assert not again.ensure_whole("d" * 64, entries)
    assert compiled.read_bytes() == shipped and again.drift("d" * 64) == []
    # And afterwards, by its change time:
    rewrite_keeping_size_and_times(compiled, b"\0" * len(shipped))
    assert again.drift("d" * 64) == ["__pycache__/" + compiled.name]


def _stored(store: Store, data: dict[str, bytes]) -> list[Entry]:
    """Put the files ``data`` (path: contents) in ``store``: their manifest entries."""
    entries = []
    for path, raw in data.items():
        digest = hashlib.sha256(raw).hexdigest()
        store.put_compressed(digest, zlib.compress(raw))
        entries.append(Entry(path, len(raw), False, digest))
    return entries


def test_the_files_this_process_writes_are_found_as_psutil_finds_them(tmp_path: Path) -> None:
    import psutil

    from distrib.main._shipping import _files_being_written

    (tmp_path / "read.txt").write_text("x")
    with open(tmp_path / "w.txt", "w"), open(tmp_path / "a.txt", "a"), \
            open(tmp_path / "rw.txt", "w+"), open(tmp_path / "read.txt"):
        found = {p for p in _files_being_written() if p.parent == tmp_path}
        by_psutil = {Path(f.path) for f in psutil.Process().open_files()
                     if any(c in f.mode for c in "wa+") and Path(f.path).parent == tmp_path}
    assert found == by_psutil == {tmp_path / n for n in ("w.txt", "a.txt", "rw.txt")}


def test_blobs_stored_uncompressed_for_a_worker_on_this_machine_are_verified_alike(
        tmp_path: Path) -> None:
    from distrib.wire import _messages as m
    from distrib.wire._payload import blob_batches

    raw = b"x = 1\n" * 1000
    digest = hashlib.sha256(raw).hexdigest()
    [stored] = blob_batches("d" * 64, [digest], lambda d: raw, level=0)
    [packed] = blob_batches("d" * 64, [digest], lambda d: raw)
    assert isinstance(stored, m.Blobs) and isinstance(packed, m.Blobs)
    assert len(stored.frames[0]) > len(raw) > len(packed.frames[0])  # (a zlib stream all the same)
    store = Store(tmp_path / "store")
    with pytest.raises(WorkspaceError, match="does not match its hash"):
        store.put_compressed(digest, zlib.compress(raw + b"!", 0), size=len(raw) + 1)
    store.put_compressed(digest, stored.frames[0], size=len(raw))
    assert store.blob_path(digest).read_bytes() == raw and store.missing(
        [Entry("x.py", len(raw), False, digest)]) == []
    assert not list(store.blobs.glob("*/.tmp-*"))  # (written whole, by its own name)

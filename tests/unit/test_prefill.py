"""The embedded cluster's first run: the Main puts the workspace's files in its daemon's store
while that daemon starts, and stops once it listens; the store takes only what matches."""

from __future__ import annotations

from pathlib import Path

from distrib.main._prefill import CHECK_EVERY, MAX_FILE, MAX_TOTAL, prefill
from distrib.workspace._manifest import scan
from distrib.workspace._store import Store


def _workspace(root: Path, files: int) -> Path:
    root.mkdir()
    for i in range(files):
        (root / f"mod{i}.py").write_text(f"VALUE = {i}\n")
    return root


def test_the_files_are_stored_and_a_daemon_finds_none_missing(tmp_path: Path) -> None:
    dist = scan(_workspace(tmp_path / "ws", 5), None)
    assert prefill(tmp_path / "store", dist, lambda: True) == 5
    daemon = Store(tmp_path / "store")  # (it hashes what it finds before it counts it)
    assert daemon.missing(list(dist.entries)) == []
    assert prefill(tmp_path / "store", dist, lambda: True) == 0  # (there already)


def test_it_stops_once_the_daemon_listens_and_the_rest_stays_missing(tmp_path: Path) -> None:
    dist = scan(_workspace(tmp_path / "ws", CHECK_EVERY * 3), None)
    looks = iter([True, True])  # ready at the third look
    written = prefill(tmp_path / "store", dist, lambda: next(looks, False))
    assert written == CHECK_EVERY * 2
    assert len(Store(tmp_path / "store").missing(list(dist.entries))) == CHECK_EVERY
    assert prefill(tmp_path / "other", dist, lambda: False) == 0  # (ready already)


def test_a_file_changed_since_the_scan_is_not_stored_under_its_old_hash(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", 2)
    dist = scan(root, None)
    (root / "mod0.py").write_text("VALUE = 'changed'\n")
    assert prefill(tmp_path / "store", dist, lambda: True) == 1
    missing = Store(tmp_path / "store").missing(list(dist.entries))
    assert missing == [e.digest for e in dist.entries if e.path == "mod0.py"]


def test_a_blob_planted_under_a_wrong_hash_is_found_missing_by_the_daemon(
        tmp_path: Path) -> None:
    dist = scan(_workspace(tmp_path / "ws", 1), None)
    (entry,) = dist.entries
    planted = Store(tmp_path / "store").blob_path(entry.digest)
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text("not what the hash says\n")
    assert prefill(tmp_path / "store", dist, lambda: True) == 0  # (a file is there)
    assert Store(tmp_path / "store").missing([entry]) == [entry.digest]  # and is not trusted


def test_large_files_and_workspaces_are_left_to_travel_saying_so(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", 1)
    (root / "big.bin").write_bytes(b"x" * (MAX_FILE + 1))
    for i in range(MAX_TOTAL // MAX_FILE + 1):  # (together over the total)
        (root / f"part{i}.bin").write_bytes(bytes([i]) * MAX_FILE)
    dist = scan(root, None)
    prefill(tmp_path / "store", dist, lambda: True)
    missing = {e.path for e in dist.entries
               if e.digest in Store(tmp_path / "store").missing(list(dist.entries))}
    assert "big.bin" in missing and "mod0.py" not in missing
    assert len(missing) >= 2  # (the parts past the total too)

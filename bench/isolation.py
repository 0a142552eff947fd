"""What keeping environments private and whole costs on a worker, distrib alone (no peer has it).

    bench/.venv/bin/python -m bench.isolation [--files 1000] [--size BYTES]

Builds an environment of ``--files`` workspace modules through the worker's own store, then
times, each in a fresh child process where it needs one:
- building the tree (copying blobs, compiling) and the drift check run before it is reused:
  a new daemon's first check (every file hashed), a later one (a stat of each file), and one
  after another tree linked the same blobs (which moves every file's change time: all hashed);
- ``enter()`` before a task, on a clean layer (the common case) and after a task that wrote
  (a fresh overlay), for the overlay and for the copy fallback.
Prints a Markdown table; W1 gives the end-to-end throughput with it all in place.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import statistics
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from distrib.workspace._manifest import Entry
from distrib.workspace._store import Store


def build(root: Path, files: int, size: int = 0) -> tuple[Store, Path, dict[str, float]]:
    store = Store(root / "store")
    entries = []
    for i in range(files):
        raw = f"VALUE = {i}\n".encode()
        raw += b"#" * max(0, size - len(raw) - 1) + b"\n" if size else b""
        digest = hashlib.sha256(raw).hexdigest()
        store.put_compressed(digest, zlib.compress(raw))
        entries.append(Entry(f"pkg{i % 20}/mod{i}.py", len(raw), False, digest))
    t0 = time.perf_counter()
    env = store.materialize("e" * 64, entries, imports=[f"pkg{i}" for i in range(20)])
    built = time.perf_counter() - t0

    def check() -> float:
        t0 = time.perf_counter()
        assert store.drift("e" * 64) == []
        return time.perf_counter() - t0

    checks = [check() for _ in range(20)]
    store.materialize("f" * 64, entries)  # another tree of the same blobs
    after_links = check()
    store = Store(root / "store")  # a new daemon on the same cache: nothing checked yet
    t0 = time.perf_counter()
    assert not store.ensure_whole("e" * 64, entries)
    first = time.perf_counter() - t0
    return store, env, {"build_s": built, "drift_check_ms": statistics.median(checks) * 1e3,
                        "first_check_ms": first * 1e3, "after_links_ms": after_links * 1e3,
                        "bytes": sum(e.size for e in entries)}


def time_enter(kind: str, env: str, scratch: str, out: Any) -> None:
    """In a child process: median cost of enter() on a clean and on a written layer."""
    from distrib.executor import _isolation

    iso = (_isolation.Overlay if kind == "overlay" else _isolation.Copies)(
        Path(env), Path(scratch))
    iso.enter()
    time.sleep(0.06)  # past the mtime tick, as between real tasks
    clean, dirty = [], []
    for i in range(200):
        t0 = time.perf_counter()
        iso.enter()
        clean.append(time.perf_counter() - t0)
    for i in range(50):
        Path(f"written-{i}.txt").write_text("x")
        t0 = time.perf_counter()
        iso.enter()
        dirty.append(time.perf_counter() - t0)
    out.send({"clean_us": statistics.median(clean) * 1e6,
              "after_write_ms": statistics.median(dirty) * 1e3})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.isolation")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=0, help="bytes per file (0: one line)")
    args = parser.parse_args()
    files = args.files
    with tempfile.TemporaryDirectory() as tmp:
        _, env, store_numbers = build(Path(tmp), files, args.size)
        results: dict[str, Any] = {"files": files, **store_numbers}
        ctx = multiprocessing.get_context("spawn")
        for kind in ("overlay", "copy"):
            ours, theirs = ctx.Pipe()
            scratch = Path(tmp) / f"scratch-{kind}"
            proc = ctx.Process(target=time_enter, args=(kind, str(env), str(scratch), theirs))
            proc.start()
            results[kind] = ours.recv() if ours.poll(300) else {"error": "no answer"}
            proc.join(30)
    print(json.dumps(results, indent=1))
    print(f"\n| {files} workspace files | cost |\n| --- | ---: |")
    print(f"| building the tree (copies, compiling), once | {results['build_s']:.2f} s |")
    print(f"| ({results['bytes'] / 1e6:.1f} MB in all) | |")
    print(f"| drift check, a new daemon's first use (every file hashed) | "
          f"{results['first_check_ms']:.1f} ms |")
    print(f"| drift check before a run reuses it (a stat of each file) | "
          f"{results['drift_check_ms']:.1f} ms |")
    print(f"| the same after another tree linked the same blobs (all hashed) | "
          f"{results['after_links_ms']:.1f} ms |")
    for kind in ("overlay", "copy"):
        r = results[kind]
        if "error" not in r:
            print(f"| {kind}: before a task, clean layer | {r['clean_us']:.1f} µs |")
            print(f"| {kind}: before a task, after one that wrote | {r['after_write_ms']:.2f} ms |")
    print(f"\n(os.cpu_count() = {os.cpu_count()})")


if __name__ == "__main__":
    main()

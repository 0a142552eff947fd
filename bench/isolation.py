"""What keeping environments private and whole costs on a worker, distrib alone (no peer has it).

    bench/.venv/bin/python -m bench.isolation [--files 1000]

Builds an environment of ``--files`` workspace modules through the worker's own store, then
times, each in a fresh child process where it needs one:
- building the tree (copying blobs, compiling) and the drift check run before it is reused;
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


def build(root: Path, files: int) -> tuple[Store, Path, dict[str, float]]:
    store = Store(root / "store")
    entries = []
    for i in range(files):
        raw = f"VALUE = {i}\n".encode()
        digest = hashlib.sha256(raw).hexdigest()
        store.put_compressed(digest, zlib.compress(raw))
        entries.append(Entry(f"pkg{i % 20}/mod{i}.py", len(raw), False, digest))
    t0 = time.perf_counter()
    env = store.materialize("e" * 64, entries)
    built = time.perf_counter() - t0
    checks = []
    for _ in range(20):
        t0 = time.perf_counter()
        assert store.drift("e" * 64) == []
        checks.append(time.perf_counter() - t0)
    return store, env, {"build_s": built, "drift_check_ms": statistics.median(checks) * 1e3}


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
    files = parser.parse_args().files
    with tempfile.TemporaryDirectory() as tmp:
        _, env, store_numbers = build(Path(tmp), files)
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
    print(f"| drift check before a run reuses it | {results['drift_check_ms']:.1f} ms |")
    for kind in ("overlay", "copy"):
        r = results[kind]
        if "error" not in r:
            print(f"| {kind}: before a task, clean layer | {r['clean_us']:.1f} µs |")
            print(f"| {kind}: before a task, after one that wrote | {r['after_write_ms']:.2f} ms |")
    print(f"\n(os.cpu_count() = {os.cpu_count()})")


if __name__ == "__main__":
    main()

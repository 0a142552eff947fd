"""What this user's Mains launched, for ``distrib status``: one small file per launch in the
cache's ``launch/active`` folder, rewritten as its workers change and removed when the launch
ends. A file whose Main is gone (killed before it could remove it) is stale: the next reader
removes it."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

from distrib import _process

_numbers = itertools.count(1)


def folder(cache: Path) -> Path:
    return cache / "launch" / "active"


class Record:
    """One launch's file: ``kind`` ("ssh", "slurm") and, per worker, where it runs and its
    state."""

    def __init__(self, cache: Path, kind: str) -> None:
        self.kind = kind
        self.path = folder(cache) / f"{os.getpid()}-{kind}-{next(_numbers)}.json"

    def write(self, workers: list[dict[str, str]]) -> None:
        """Say these workers (each ``{"where": ..., "state": ...}``) now."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"main_pid": os.getpid(), "main_started":
                _process.started_at(os.getpid()), "kind": self.kind, "workers": workers}))
            os.replace(tmp, self.path)  # (a reader sees the old file or the new one)
        except OSError:
            pass  # (a cache it may not write: status only lacks the launch)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def read(cache: Path) -> list[dict[str, Any]]:
    """The launches of Mains still running, oldest first (removing the files of the others)."""
    out = []
    for path in sorted(folder(cache).glob("*.json"), key=lambda p: p.stat().st_mtime
                       if p.exists() else 0):
        try:
            record = json.loads(path.read_text())
            alive = _process.started_at(int(record["main_pid"])) == record["main_started"]
        except Exception:  # (unreadable, half-written by an old version, or a process gone)
            alive = False
        if alive:
            out.append(record)
        else:
            path.unlink(missing_ok=True)
    return out


def lines(cache: Path) -> list[dict[str, str]]:
    """One row per launched worker: its launch's kind, where it runs, its state, its Main."""
    return [{"kind": r["kind"], "where": str(w.get("where", "")),
             "state": str(w.get("state", "")), "main_pid": str(r["main_pid"])}
            for r in read(cache) for w in r.get("workers", [])]


def table(rows: list[dict[str, str]]) -> Any:
    """The rows of ``lines`` as a table for ``distrib status``."""
    from rich.table import Table

    out = Table(title="workers launched by Mains running here")
    for column in ("launcher", "where", "state", "Main's pid"):
        out.add_column(column, overflow="fold")
    for row in rows:
        out.add_row(row["kind"], row["where"], row["state"], row["main_pid"])
    return out

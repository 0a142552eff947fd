"""The shared objects each Main sent this worker (``distrib.share``), as files.

One folder per Main, one file per object (named by the hash of its frames: see
``distrib._shared``), so an executor maps the file when it unpickles a call instead of
receiving the bytes with every task. Each Main may hold ``limit`` bytes here; a new object
makes room by removing that Main's least recently used objects that no queued or running task
passes, and a task whose objects cannot fit yet is deferred (its Main sends it again later).
The daemon only writes the frames it received; executors read them (``load``).
"""

from __future__ import annotations

import shutil
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distrib._shm import map_private

_COUNT = struct.Struct("<I")

current: Path | None = None  # in an executor: the folder of the running task's Main


@dataclass
class Plan:
    """What a task passing shared objects needs: objects to ask its Main for, objects it
    waits for (asked, not here yet); or ``defer`` (no room yet), or an ``error``."""

    ask: list[str] = field(default_factory=list)
    waits: set[str] = field(default_factory=set)
    defer: bool = False
    error: str = ""


class Objects:
    """Every Main's shared objects on this worker, at most ``limit`` bytes per Main."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self._held: dict[bytes, OrderedDict[str, int]] = {}  # per Main, least recent first
        self._asked: dict[bytes, dict[str, int]] = {}  # asked for, not here yet: declared size
        self.counters = dict.fromkeys(("objects_fetched", "objects_reused"), 0)

    def where(self, peer: bytes) -> Path:
        """The folder of ``peer``'s objects."""
        return self.folder / peer.hex()

    def held(self) -> tuple[int, int]:
        """(objects, bytes) held for all Mains."""
        return (sum(len(h) for h in self._held.values()),
                sum(sum(h.values()) for h in self._held.values()))

    def plan(self, peer: bytes, objects: dict[str, int], in_use: Callable[[], set[str]]
             ) -> Plan:
        """A task of ``peer`` passes ``objects`` (name -> declared bytes); ``in_use()``: the
        objects its other queued and running tasks pass (they stay)."""
        held = self._held.setdefault(peer, OrderedDict())
        asked = self._asked.setdefault(peer, {})
        plan = Plan()
        for key, size in objects.items():
            if key in held:
                held.move_to_end(key)
                self.counters["objects_reused"] += 1
            elif key in asked:  # on its way for an earlier task
                plan.waits.add(key)
                self.counters["objects_reused"] += 1
            else:
                plan.ask.append(key)
        if not plan.ask:
            return plan
        need = sum(objects[k] for k in plan.ask)
        if need > self.limit:
            plan.error = (f"the call passes {need:,} bytes of shared objects, more than this "
                          f"worker keeps for one Main ({self.limit:,} bytes, its --max-objects)")
            return plan
        if sum(held.values()) + sum(asked.values()) + need > self.limit:
            keep = in_use() | set(objects)
            for key in [k for k in held if k not in keep]:
                self._remove(peer, key)
                if sum(held.values()) + sum(asked.values()) + need <= self.limit:
                    break
        if sum(held.values()) + sum(asked.values()) + need > self.limit:
            return Plan(defer=True)
        asked.update((k, objects[k]) for k in plan.ask)
        plan.waits.update(plan.ask)
        return plan

    def arrived(self, peer: bytes, key: str, frames: list[Any]) -> str | None:
        """Store an object that ``peer`` sent: "" if kept, None if not asked for (ignored),
        else why it is refused. ``OSError`` if it cannot be written."""
        declared = self._asked.get(peer, {}).pop(key, None)
        if declared is None:
            return None
        views = [memoryview(f.buffer if hasattr(f, "buffer") else f).cast("B") for f in frames]
        size = sum(v.nbytes for v in views)
        if size != declared:
            return f"{size:,} bytes sent for an object its calls said has {declared:,}"
        folder = self.where(peer)
        folder.mkdir(parents=True, exist_ok=True)
        write(folder / key, views)
        self._held[peer][key] = size
        self.counters["objects_fetched"] += 1
        return ""

    def failed(self, peer: bytes, keys: list[str]) -> None:
        """``peer`` cannot send ``keys``: forget that they were asked for."""
        asked = self._asked.get(peer, {})
        for key in keys:
            asked.pop(key, None)

    def forget(self, peer: bytes) -> None:
        """A Main left: remove its objects."""
        self._held.pop(peer, None)
        self._asked.pop(peer, None)
        shutil.rmtree(self.where(peer), ignore_errors=True)

    def _remove(self, peer: bytes, key: str) -> None:
        del self._held[peer][key]
        (self.where(peer) / key).unlink(missing_ok=True)


def write(path: Path, frames: list[memoryview]) -> None:
    """One object in one file: the frame count, each frame's size, then the frames."""
    tmp = path.with_suffix(".part")
    try:
        with open(tmp, "wb") as f:
            f.write(_COUNT.pack(len(frames)) + struct.pack(f"<{len(frames)}Q",
                                                            *(v.nbytes for v in frames)))
            for view in frames:
                f.write(view)
        tmp.rename(path)
    except BaseException:  # (a full disk, say): no half-written file stays behind
        tmp.unlink(missing_ok=True)
        raise


def load(key: str) -> list[memoryview]:
    """In an executor: the frames of an object of the running task's Main, as views of a
    private (copy-on-write) map of its file: nothing is copied, and a task that changes them
    changes only its own pages."""
    if current is None:
        raise FileNotFoundError(f"shared object {key}: no folder of objects for this task")
    view = map_private(current / key)
    (count,) = _COUNT.unpack_from(view)
    sizes = struct.unpack_from(f"<{count}Q", view, _COUNT.size)
    at = _COUNT.size + 8 * count
    frames = []
    for size in sizes:
        frames.append(view[at:at + size])
        at += size
    return frames

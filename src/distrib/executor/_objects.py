"""Shared objects as an executor loads them: the frames of an object its task's Main shared
(``distrib.share``), mapped from the file the daemon keeps (``distrib.worker._objects``)."""

from __future__ import annotations

from pathlib import Path

from distrib._shm import map_private, read_object_header

current: Path | None = None  # the folder of the running task's Main's objects


def load(name: str) -> list[memoryview]:
    """The frames of an object of the running task's Main, as views of a private
    (copy-on-write) map of its file: nothing is copied, and a task that changes them
    changes only its own pages."""
    if current is None:
        raise FileNotFoundError(f"shared object {name}: no folder of objects for this task")
    view = map_private(current / name)
    at, sizes = read_object_header(view)
    frames = []
    for size in sizes:
        frames.append(view[at:at + size])
        at += size
    return frames

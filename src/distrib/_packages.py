"""Installed distributions, read quickly: by name, their headers, what they require, and the
top-level names they install. The Main uses it to describe its environment, a worker to link
its own distrib into built ones."""

from __future__ import annotations

import functools
import importlib.metadata as md
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from distrib.wire._envspec import normalize


@functools.lru_cache(maxsize=None)
def installed(name: str) -> md.Distribution | None:
    """The installed distribution called ``name``, if any."""
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def headers(dist: md.Distribution) -> tuple[str, str, tuple[str, ...]]:
    """(Name, Version, Requires-Dist) of a distribution, read from the head of its METADATA
    (the standard parser builds a whole e-mail message every time one is asked for)."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    name = version = ""
    requires: list[str] = []
    for line in text.split("\n"):
        if not line.strip():
            break  # the headers end at the first blank line; the description follows
        key, _, value = line.partition(":")
        if key == "Name":
            name = value.strip()
        elif key == "Version":
            version = value.strip()
        elif key == "Requires-Dist":
            requires.append(value.strip())
    return name, version, tuple(requires)


def forget() -> None:
    """Read again from disk next time (what is installed may have changed)."""
    installed.cache_clear()
    headers.cache_clear()


def closure(roots: Iterable[str]) -> set[str]:
    """``roots`` and what they require, transitively (markers evaluated here), by normalized
    name; only installed ones."""
    seen: set[str] = set()
    todo = [normalize(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        dist = installed(name)
        if dist is None:
            continue
        seen.add(name)
        for line in headers(dist)[2]:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(normalize(req.name))
    return seen


def top_levels(name: str) -> set[str]:
    """The top-level names (packages, modules, folders such as ``pyzmq.libs``) a distribution
    installs beside its metadata."""
    dist = installed(name)
    if dist is None:
        return set()
    tops = {Path(str(f)).parts[0].removesuffix(".py") for f in dist.files or []
            if not str(f).startswith("..")}
    return {t for t in tops if not t.endswith((".dist-info", ".pth")) and not t.startswith("__")}

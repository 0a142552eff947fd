"""The wheels a Main sends to the hosts it launches workers on, so no host needs a package
index: distrib's own, built from this Main's copy of the package (an editable install too),
and those of the distributions it requires, repacked from the files installed here (the same
platform and Python as the host's, which the launcher checks). Built once, cached by content
under the Main's cache folder; a host keeps what it received by digest.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import io
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from distrib._errors import LaunchError

_DATE = (1980, 1, 1, 0, 0, 0)  # fixed: the same files make the same wheel, and digest
_SKIPPED_INFO = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


@dataclass(frozen=True)
class Wheel:
    path: Path
    digest: str  # sha256 of the file: a host asks only for those it lacks
    size: int


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _write(target: Path, files: list[tuple[str, bytes, int]], info: str) -> None:
    """A wheel of ``files`` (archive name, bytes, mode), with a RECORD, written atomically."""
    record = [_record_line(n, d) for n, d, _ in files] + [f"{info}/RECORD,,"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data, mode in [*files, (f"{info}/RECORD", "\n".join(record).encode(), 0o644)]:
            entry = zipfile.ZipInfo(name, _DATE)
            entry.external_attr = (mode & 0o777 | 0o100000) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}")
    part.write_bytes(buffer.getvalue())
    os.replace(part, target)


def _as_wheel(path: Path) -> Wheel:
    data = path.read_bytes()
    return Wheel(path, hashlib.sha256(data).hexdigest(), len(data))


def distrib_wheel(cache: Path) -> Wheel:
    """A wheel of this Main's own distrib package (its files as they are now)."""
    package = Path(__file__).resolve().parents[1]  # (this module is distrib/launch/)
    files = []
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            files.append((f"distrib/{path.relative_to(package).as_posix()}", path.read_bytes(),
                          path.stat().st_mode))
    meta = md.distribution("distrib")
    info = f"distrib-{meta.version}.dist-info"
    # (an egg-info record, as setuptools' `develop` or an older editable install leaves in
    # the source tree, keeps the same metadata as PKG-INFO)
    metadata = meta.read_text("METADATA") or meta.read_text("PKG-INFO") or ""
    if not metadata:
        raise LaunchError("distrib's installed metadata has neither METADATA nor PKG-INFO, so "
                          "no host could install it: install distrib again")
    files.append((f"{info}/METADATA", metadata.encode(), 0o644))
    files.append((f"{info}/entry_points.txt",
                  (meta.read_text("entry_points.txt") or "").encode(), 0o644))
    files.append((f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: distrib\n"
                  b"Root-Is-Purelib: true\nTag: py3-none-any\n", 0o644))
    digest = hashlib.sha256(b"".join(n.encode() + d for n, d, _ in files)).hexdigest()[:16]
    target = cache / "launch" / "wheels" / digest / f"distrib-{meta.version}-py3-none-any.whl"
    if not target.exists():
        _write(target, files, info)
    return _as_wheel(target)


def repacked(dist: md.Distribution, cache: Path) -> Wheel:
    """A wheel of an installed distribution, from the files its RECORD lists."""
    name, version = _normal(dist.metadata["Name"]), dist.version
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")]
    tag = tags[0] if tags else "py3-none-any"
    where = str(dist.locate_file(""))
    key = hashlib.sha256(f"{where}\0{sys.version}".encode()).hexdigest()[:12]
    target = cache / "launch" / "wheels" / key / f"{name}-{version}-{tag}.whl"
    if target.exists():
        return _as_wheel(target)
    bin_dir = Path(sys.prefix) / "bin"
    files = []
    for item in dist.files or ():
        path = Path(str(dist.locate_file(item)))
        parts = item.parts
        if "__pycache__" in parts or not path.is_file():
            continue
        if parts[0] == "..":  # outside site-packages: only its scripts go along
            if path.resolve().parent != bin_dir.resolve():
                continue
            archived = f"{name}-{version}.data/scripts/{path.name}"
        elif parts[0].endswith(".dist-info") and parts[-1] in _SKIPPED_INFO:
            continue
        else:
            archived = item.as_posix()
        files.append((archived, path.read_bytes(), path.stat().st_mode))
    info = next((p.split("/")[0] for p, _, _ in files if p.split("/")[0].endswith(".dist-info")),
                f"{name}-{version}.dist-info")
    _write(target, files, info)
    return _as_wheel(target)


def requirements(names: list[str]) -> list[md.Distribution]:
    """These installed distributions and all they require (markers read for this Python),
    each once; those not installed are left out."""
    seen: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        name = _normal(todo.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = dist
        for text in dist.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(seen.values())


def for_hosts(cache: Path, packages: list[str]) -> tuple[list[Wheel], list[Wheel]]:
    """The wheels of distrib and what it requires (its venv on a host), and those of
    ``packages`` with what they require that distrib's venv lacks (for the worker's
    environments, as a folder of wheels)."""
    own = [distrib_wheel(cache)] + [repacked(d, cache) for d in requirements(["distrib"])
                                    if _normal(d.metadata["Name"]) != "distrib"]
    have = {w.path.name.split("-")[0] for w in own}
    extra = [repacked(d, cache) for d in requirements(packages)
             if _normal(d.metadata["Name"]) not in have]
    return own, extra

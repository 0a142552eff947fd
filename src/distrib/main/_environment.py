"""The Main's Python environment, described for workers (``wire._envspec.EnvSpec``).

By default: the installed distributions that provide the modules the workspace uses (those
imported by now, and those its ``.py`` files import), with everything they require, at the
versions installed here, and this Python's major.minor. A distribution installed from a
folder, a file or a VCS (no index has it) is packed into a wheel from the files this Main
imports, cached by content, and shipped as a blob like a workspace file.

``dependencies = "none"`` ships nothing but the Python version; ``requirements = FILE`` ships
that file instead (``requirements.txt``, ``pyproject.toml``, or ``uv.lock``, exported here).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from distrib import _runtime
from distrib._errors import ConfigError, DependencyError, ProtocolError
from distrib.wire import _envspec
from distrib.wire._envspec import EnvSpec, Wheel, normalize
from distrib.wire._facts import python_version
from distrib.workspace._manifest import Distribution

if TYPE_CHECKING:  # (imported when the description is not kept: 50 ms of a warm start)
    import importlib.metadata as md

log = logging.getLogger("distrib")

_TOOLING = {"pip", "setuptools", "wheel", "distrib", "uv"}  # never pinned for workers
_MAX_SOURCE = 2 << 20  # larger .py files are not read for imports
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip times: a wheel's bytes depend on its content only


def describe(dependencies: str, requirements: Path | None, dist: Distribution,
             cache: Path) -> tuple[EnvSpec, dict[str, Path]]:
    """This Main's environment, and the wheel files it ships (by digest)."""
    python = python_version()
    if dependencies == "none":
        return EnvSpec(python), {}
    if requirements is not None:
        return EnvSpec(python, file=_requirements_file(requirements)), {}
    imported = _imported_modules()
    local = {p.split("/", 1)[0].removesuffix(".py") for p in (e.path for e in dist.entries)}
    local |= set(sys.stdlib_module_names)
    # Reading every distribution's metadata takes a while: the answer is kept, for as long
    # as the same modules are imported here and by the workspace's files, and no folder on
    # sys.path changed (installs change them). Kept twice: by the files' content (their
    # hashes, from the manifest: a run whose modules did not change reads none of them), and
    # by the names they import (an edit that imports nothing new reads them, no metadata).
    sources = sorted((e.path, e.digest) for e in dist.entries
                     if e.path.endswith(".py") and e.size <= _MAX_SOURCE)
    shipped = {os.path.realpath(dist.root / folder)
               for folder in {os.path.dirname(e.path) for e in dist.entries}}
    by_content = _memo(cache, shipped, python, sorted(imported - local), sources)
    try:
        return _envspec.decode(by_content.read_bytes()), {}
    except (OSError, ProtocolError):
        pass
    named = _workspace_imports(dist)
    modules = imported | named
    imported, named = imported - local, named - local
    memo = _memo(cache, shipped, python, sorted(imported), sorted(named))
    try:
        kept = _envspec.decode(memo.read_bytes())
    except (OSError, ProtocolError):
        pass
    else:
        _keep(by_content, kept.encode())
        return kept, {}
    if (imported | named) - _TOOLING:
        spec, wheels = _from_metadata(python, imported, named, modules, local, cache)
    else:  # (nothing installed to look up: no metadata is read)
        spec, wheels = EnvSpec(python), {}
    if not wheels:  # (local packages change without a trace on sys.path: packed each time)
        _keep(memo, spec.encode())
        _keep(by_content, spec.encode())
    return spec, wheels


def _from_metadata(python: str, imported: set[str], named: set[str], modules: set[str],
                   local: set[str], cache: Path) -> tuple[EnvSpec, dict[str, Path]]:
    """The pins and packed wheels of the distributions providing the modules this Main
    imported and those its workspace names, read from the installed packages' metadata."""
    before = set(sys.modules)  # (what reading metadata imports is distrib's, not the user's)
    from distrib import _packages

    _runtime.own_modules.update(set(sys.modules) - before)
    _packages.forget()  # (what is installed may have changed since the last session)
    # distrib's own requirements count only when the workspace imports them by name
    chosen = _distributions(imported, leave_out_distribs=True)
    chosen.update(_distributions(named))
    # What the shipped local packages import needs installing too.
    local_files = {name: _local_files(found, modules) for name, found in chosen.items()
                   if _direct_url(found) is not None}
    inner = _imports(p for files in local_files.values() for a, p in files.items()
                     if a.endswith(".py"))
    chosen.update(_distributions(inner - local - set(chosen)))
    pins: list[tuple[str, str]] = []
    wheels: dict[str, Path] = {}
    specs: list[Wheel] = []
    for name, found in sorted(chosen.items()):
        if _direct_url(found) is None:
            pins.append(_packages.headers(found)[:2])
            continue
        try:
            files = local_files.get(name) or _local_files(found, modules)
            wheel, path = _pack(found, files, cache)
        except OSError as exc:
            raise DependencyError(f"cannot pack {name} {found.version} (installed from "
                                  f"{_direct_url(found)}) into a wheel for workers: {exc}")
        specs.append(wheel)
        wheels[wheel.digest] = path
    return EnvSpec(python, tuple(pins), tuple(specs)), wheels


def _memo(cache: Path, shipped: set[str], *parts: object) -> Path:
    return cache / "environments" / _fingerprint(shipped, *parts)


def _keep(memo: Path, data: bytes) -> None:
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{os.getpid()}-{memo.name}")
        tmp.write_bytes(data)
        os.replace(tmp, memo)  # (another Main may read it meanwhile: never half written)
    except OSError:
        pass


def _fingerprint(shipped: set[str], *parts: object) -> str:
    """A name for what the description depends on: the modules, and the modification time
    of every sys.path folder (installing or removing a package changes its folder's) but the
    workspace's folders that are ``shipped`` (a script's own folder, first on sys.path,
    changes at each edit; what it holds travels with the workspace, not as a package)."""
    stamps = []
    for entry in sys.path:
        if os.path.realpath(entry or ".") in shipped:
            continue
        try:
            stamps.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            stamps.append((entry, 0))
    return hashlib.sha256(repr((parts, stamps)).encode()).hexdigest()[:32]


# --- which distributions ---------------------------------------------------------------------


def _imported_modules() -> set[str]:
    """Top-level modules imported in this process, but for those distrib's own imports brought
    in (and the packages it needs) and private ones (``_distutils_hack``, ``_virtualenv``)."""
    ours = {name.partition(".")[0] for name in _runtime.own_modules}
    return {name.partition(".")[0] for name in list(sys.modules)
            if not name.startswith("_") and name.partition(".")[0] not in ours}


# ``import a.b, c as d`` and ``from a.b import c`` (not relative ones), at a line's start; a
# regular expression, as parsing every file costs a second for a large workspace.
_IMPORT = re.compile(rb"^[ \t]*(?:from[ \t]+([A-Za-z_]\w*)[\w.]*[ \t]+import\b|"
                     rb"import[ \t]+([A-Za-z_][\w. \t,]*))", re.MULTILINE)


def _workspace_imports(dist: Distribution) -> set[str]:
    """Top-level names the workspace's ``.py`` files import (absolute imports only)."""
    return _imports(dist.root / e.path for e in dist.entries
                    if e.path.endswith(".py") and e.size <= _MAX_SOURCE)


def _imports(paths: Iterable[Path]) -> set[str]:
    """Top-level names these ``.py`` files import (absolute imports only)."""
    names: set[str] = set()
    for path in paths:
        try:
            source = path.read_bytes()
        except OSError:
            continue
        if len(source) > _MAX_SOURCE:
            continue
        for single, many in _IMPORT.findall(source):
            if single:
                names.add(single.decode())
            for item in many.split(b","):
                name = item.strip().split(b" ")[0].split(b".")[0].decode()
                if name.isidentifier():
                    names.add(name)
    return names


def _distributions(modules: set[str], leave_out_distribs: bool = False
                   ) -> dict[str, md.Distribution]:
    """The distributions providing ``modules``, and all they require (with
    ``leave_out_distribs``, but distrib's own requirements)."""
    import importlib.metadata as md

    from distrib import _packages

    roots: set[str] = set()
    unknown = []
    for module in modules - _TOOLING:
        found = _packages.installed(module)  # (most distributions are named as their module)
        if found is not None and _provides(found, module):
            roots.add(normalize(module))
        elif _importable(module):  # (a name no package provides costs nothing more)
            unknown.append(module)
    if unknown:
        owners = md.packages_distributions()  # (reads every distribution's file list: slow)
        for module in unknown:
            roots.update(normalize(n) for n in owners.get(module) or _editable_owner(module))
    roots -= _TOOLING
    if roots and leave_out_distribs:  # (their closure read only when there is something)
        roots -= _packages.closure({"distrib"})
    return {name: dist for name in _packages.closure(roots)
            if name not in _TOOLING and (dist := _packages.installed(name)) is not None}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _provides(dist: md.Distribution, module: str) -> bool:
    """Whether ``module`` is installed beside ``dist``'s metadata (so most likely its)."""
    return any(Path(str(dist.locate_file(name))).exists() for name in (module, module + ".py"))


def _origin(dist: md.Distribution) -> dict[str, Any]:
    """PEP 610's record of where a distribution came from, when that was not an index."""
    try:
        found = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _direct_url(dist: md.Distribution) -> str | None:
    """Where a distribution was installed from, when that was not an index."""
    url = _origin(dist).get("url")
    return str(url) if url else None


def _editable(dist: md.Distribution) -> bool:
    info = _origin(dist).get("dir_info")
    return isinstance(info, dict) and info.get("editable") is True


def _editable_owner(module: str) -> list[str]:
    """The editable (or folder) install whose source holds ``module``, if any."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return []
    origin = spec.origin if spec else None
    if origin is None and spec is not None and spec.submodule_search_locations:
        origin = next(iter(spec.submodule_search_locations), None)
    if not origin:
        return []
    import importlib.metadata as md

    for dist in md.distributions():
        folder = _local_folder(dist)
        if folder is not None and Path(origin).resolve().is_relative_to(folder):
            return [dist.metadata["Name"]]
    return []


def _local_folder(dist: md.Distribution) -> Path | None:
    url = _direct_url(dist)
    if url is None or not url.startswith("file://"):
        return None
    path = Path(unquote(urlparse(url).path))
    return path.resolve() if path.is_dir() else None


# --- wheels of local packages ----------------------------------------------------------------


def _local_files(dist: md.Distribution, modules: set[str]) -> dict[str, Path]:
    """The files of a package installed from a folder, file or VCS, by their path in a
    wheel: for an editable install, those of the modules the Main uses from its folder."""
    files: dict[str, Path] = {}
    folder = _local_folder(dist)
    if _editable(dist) and folder is not None:
        for module in sorted(modules):
            try:
                spec = importlib.util.find_spec(module)
            except (ImportError, ValueError):
                continue
            origin = spec.origin if spec else None
            if spec is not None and origin is None and spec.submodule_search_locations:
                origin = next(iter(spec.submodule_search_locations), None)
            if spec is None or not origin or not Path(origin).resolve().is_relative_to(folder):
                continue  # (not this package's: it lives elsewhere)
            if spec.submodule_search_locations:
                root = Path(next(iter(spec.submodule_search_locations)))
                for path in sorted(root.rglob("*")):
                    if path.is_file() and "__pycache__" not in path.parts:
                        files[f"{module}/{path.relative_to(root).as_posix()}"] = path
            elif spec.origin:
                files[Path(spec.origin).name] = Path(spec.origin)
    else:
        for f in dist.files or []:
            text = str(f)
            if text.startswith("..") or "__pycache__" in text or ".dist-info/" in text:
                continue
            files[Path(text).as_posix()] = Path(str(dist.locate_file(f)))
    return files


def _pack(dist: md.Distribution, files: dict[str, Path], cache: Path) -> tuple[Wheel, Path]:
    """A wheel of ``dist`` holding ``files``, and where it is."""
    import zipfile

    from distrib import _packages

    name, version = _packages.headers(dist)[:2]
    info = f"{_envspec._normal(name)}-{version}.dist-info"
    metadata = dist.read_text("METADATA") or f"Metadata-Version: 2.1\nName: {name}\n" \
                                               f"Version: {version}\n"
    wheel_text = ("Wheel-Version: 1.0\nGenerator: distrib\nRoot-Is-Purelib: true\n"
                  "Tag: py3-none-any\n")
    contents = [(arc, path.read_bytes()) for arc, path in sorted(files.items())]
    contents += [(f"{info}/METADATA", metadata.encode()), (f"{info}/WHEEL", wheel_text.encode())]
    record = "".join(f"{arc},sha256={_b64(data)},{len(data)}\n" for arc, data in contents)
    contents.append((f"{info}/RECORD", (record + f"{info}/RECORD,,\n").encode()))
    out = cache / "wheels"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{os.getpid()}-{_envspec._normal(name)}.whl"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for arc, data in contents:
            item = zipfile.ZipInfo(arc, _EPOCH)
            item.external_attr = 0o644 << 16
            item.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(item, data)
    data = tmp.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    path = out / digest[:2] / f"{digest}.whl"
    path.parent.mkdir(exist_ok=True)
    os.replace(tmp, path)
    if len(data) > _envspec.MAX_WHEEL_BYTES:
        raise OSError(f"the wheel is {len(data) >> 20} MiB, more than workers take")
    return Wheel(name, version, digest, len(data)), path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


# --- requirements files ----------------------------------------------------------------------


# a line that installs from a path: ``-e ./x``, ``./x``, ``../x``, ``/x``, ``file:...``
_LOCAL = re.compile(r"^\s*(?:-e\s|--editable\b|\.{1,2}/|/)|\bfile:|@\s*(?:\.{1,2}/|/)")


def _requirements_file(path: Path) -> tuple[str, str]:
    """(kind, text) of a requirements file; a ``uv.lock`` is exported to requirements here."""
    if not path.is_file():
        raise ConfigError(f"requirements {path}: no such file")
    if path.name == "uv.lock":
        from uv import find_uv_bin

        done = subprocess.run(
            [find_uv_bin(), "export", "--frozen", "--no-hashes", "--no-emit-project",
             "--format", "requirements-txt", "--project", str(path.parent)],
            capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"requirements {path}: uv could not export it: "
                              f"{done.stderr.strip()[-500:]}")
        return "requirements.txt", done.stdout
    kind = "pyproject.toml" if path.name == "pyproject.toml" else "requirements.txt"
    text = path.read_text()
    local = [line.strip() for line in text.splitlines() if _LOCAL.search(line.split("#")[0])]
    if local:
        raise ConfigError(f"requirements {path}: {local[0]!r} names a path on this machine, "
                          "which workers do not have; install that package here and use "
                          "dependencies = \"auto\" (it ships packages installed from folders)")
    if len(text) > _envspec.MAX_FILE_TEXT:
        raise ConfigError(f"requirements {path}: larger than {_envspec.MAX_FILE_TEXT} bytes")
    return kind, text

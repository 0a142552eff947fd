"""Python environments a worker builds for its Mains: one virtualenv per description, made
once with ``uv`` from an interpreter of the Main's Python version, kept in the cache and shared
by every Main that describes the same environment.

    Hello --plan--> base (this daemon's own interpreter has it all)
                |-> cached (built before)
                |-> refused (no such Python here; installs are off and packages are missing)
                '-> to build --first task--> [wheels from the Main] --> uv venv + uv pip install
                                                                     --> ready | failed

A build runs in a thread (``uv`` does the work in a subprocess); the daemon's loop hears of its
end through ``wake`` and ``finished()``. Executors of a built environment run its interpreter;
they import this daemon's distrib (and what it needs) from a folder a ``.pth`` file appends to
the end of ``sys.path``, so a package the Main pinned wins over the worker's copy.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from msgspec import Struct, field

from distrib._logs import RateLimited
from distrib.worker import _index, _pythons
from distrib.wire._envspec import EnvSpec, normalize
from distrib.wire._facts import python_version
from distrib.wire._record import ErrorRecord

log = logging.getLogger("distrib.worker")
peer_log = RateLimited(log)

INSTALL_POLICIES = ("never", "wheels", "any")
_DONE = ".complete"  # written last: an environment without it is a failed or cut-off build
_TAIL = 12  # lines of the installer's output a failure reports


class EnvPolicy(Struct, frozen=True):
    """What the owner allows: ``install`` is never (nothing installed), wheels (binary wheels
    only: no package's build code runs here) or any; where packages come from; which extra
    interpreters to offer; how much disk built environments may take."""

    install: str = "wheels"
    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    pythons: tuple[Path, ...] = ()
    max_bytes: int | None = None


class _Build(Struct, eq=False):
    spec: EnvSpec
    peers: set[bytes] = field(default_factory=set)  # Mains whose tasks wait for it
    missing: set[str] = field(default_factory=set)  # wheel blobs not received yet
    started: float = 0.0
    running: bool = False
    proc: subprocess.Popen[str] | None = None


class Finished(Struct, frozen=True):
    """A build ended: ``info`` is None when it worked, else the error record for its tasks."""

    env_id: str
    info: dict[str, str] | None
    peers: frozenset[bytes]
    seconds: float


_uv_lock = threading.Lock()


@functools.cache
def _uv_path() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def _uv() -> str:
    """uv's binary, found once: builds run in threads, and finding it reads sysconfig,
    whose first read is not thread-safe (two builds at once once got None for a variable)."""
    with _uv_lock:
        return _uv_path()


def _uv_environ(cache: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_", "VIRTUAL_ENV"))}
    env.update(UV_PYTHON_DOWNLOADS="never", UV_NO_CONFIG="1", UV_NO_PROGRESS="1")
    if cache is not None:
        env["UV_CACHE_DIR"] = str(cache)
    return env


class Environments:
    """The environments of one worker's cache (``root``), built under ``policy``."""

    def __init__(self, root: Path, policy: EnvPolicy, name: Callable[[], str],
                 wake: Callable[[], None], in_use: Callable[[], set[str]] = set,
                 dropped: Callable[[str], None] = lambda env: None) -> None:
        self.root = root
        self.policy = policy
        self._name = name
        self._wake = wake  # (called from build threads)
        self._in_use = in_use  # environments of connected Mains and of tasks: never evicted
        self._dropped = dropped  # told when an environment is evicted
        self.blob_path: Callable[[str], Path] = lambda digest: root / digest
        root.mkdir(parents=True, exist_ok=True)
        self.pythons = _pythons.find_interpreters(policy.pythons)
        self._own = python_version()
        self._own_versions: dict[str, str] | None = None  # read at the first description
        self._runtime: Path | None = None  # made at the first build
        self._runtime_lock = threading.Lock()
        self._builds: dict[str, _Build] = {}
        self._finished: queue.SimpleQueue[Finished] = queue.SimpleQueue()
        self.counters = dict.fromkeys(("envs_built", "envs_reused", "envs_failed"), 0)
        for leftover in root.iterdir():  # builds cut off by a daemon that died
            if leftover.is_dir() and not (leftover / _DONE).exists() and not \
                    leftover.name.startswith((".", "runtime")):
                shutil.rmtree(leftover, ignore_errors=True)

    # --- what a Main can have ----------------------------------------------------------------

    @property
    def _installed(self) -> dict[str, str]:
        """Versions of the distributions this daemon's own interpreter has."""
        if self._own_versions is None:
            self._own_versions = _own_versions()
        return self._own_versions

    @property
    def runtime(self) -> Path:
        with self._runtime_lock:
            if self._runtime is None:
                self._runtime = self._make_runtime()
            return self._runtime

    def plan(self, spec: EnvSpec) -> tuple[str, str]:
        """(environment id, or "" for this daemon's own interpreter; why it cannot be had
        here, or "")."""
        if spec.python == self._own and not spec.wheels and spec.file is None and all(
                self._installed.get(normalize(n)) == v for n, v in spec.pins):
            return "", ""
        env_id = spec.env_id
        if self.ready(env_id):
            return env_id, ""
        if spec.python not in self.pythons:
            return env_id, (f"worker {self._name()} has no Python {spec.python} (it has "
                            f"{', '.join(self.pythons)}; its owner can add one with --python "
                            "PATH)")
        if self.policy.install == "never" and not spec.empty:
            lacking = [f"{n}=={v}" for n, v in spec.pins
                       if self._installed.get(normalize(n)) != v]
            lacking += [f"{w.name} {w.version} (shipped)" for w in spec.wheels]
            if spec.file:
                lacking.append(f"the packages of {spec.file[0]}")
            return env_id, (f"worker {self._name()} installs no packages (--install never) "
                            f"and lacks {', '.join(lacking[:8])}")
        return env_id, ""

    def ready(self, env_id: str) -> bool:
        return (self.root / env_id / _DONE).exists()

    def python(self, env_id: str) -> Path:
        return self.root / env_id / "bin" / "python"

    def path(self, env_id: str) -> Path:
        return self.root / env_id

    def disk_use(self) -> tuple[int, int]:
        """(built environments, bytes they and uv's cache take)."""
        built = sum(1 for env in self.root.glob("*") if (env / _DONE).exists()) \
            if self.root.is_dir() else 0
        return built, _disk_use(self.root)

    def versions(self) -> list[str]:
        return list(self.pythons)

    # --- building ----------------------------------------------------------------------------

    def request(self, spec: EnvSpec, peer: bytes, have_blob: Callable[[str], bool]
                ) -> tuple[bool, set[str]]:
        """A task of ``peer`` needs ``spec``'s environment: join (or start) its build. Returns
        whether ``peer`` newly joined, and the wheel blobs to ask it for (the build starts when
        ``blob_arrived`` has seen them all)."""
        env_id = spec.env_id
        build = self._builds.get(env_id)
        if build is None:
            build = self._builds[env_id] = _Build(spec, started=time.monotonic())
            build.missing = {w.digest for w in spec.wheels if not have_blob(w.digest)}
            if not build.missing:
                self._start(env_id, build)
        new_peer = peer not in build.peers
        build.peers.add(peer)
        return new_peer, set(build.missing) if new_peer else set()

    def building(self, env_id: str) -> bool:
        return env_id in self._builds

    def wanted(self, digest: str) -> list[str]:
        """Builds waiting for this wheel blob."""
        return [e for e, b in self._builds.items() if digest in b.missing]

    def blob_arrived(self, digest: str) -> None:
        for env_id in self.wanted(digest):
            build = self._builds[env_id]
            build.missing.discard(digest)
            if not build.missing and not build.running:
                self._start(env_id, build)

    def reject(self, env_id: str, peer: bytes, message: str) -> dict[str, str] | None:
        """``peer`` sent a wheel that is not what the description says, or cannot send one:
        it no longer takes part in the build, whose other Mains may still send the wheels.
        Returns the error for ``peer``'s waiting tasks (None if it was not taking part); when
        no Main is left, the build is dropped."""
        build = self._builds.get(env_id)
        if build is None or build.running or peer not in build.peers:
            return None
        build.peers.discard(peer)
        if not build.peers:
            del self._builds[env_id]
        return self._error(build.spec, message)

    def used(self, env_id: str) -> None:
        """A Main found ``env_id`` built: count it and mark it recently used."""
        self.counters["envs_reused"] += 1
        try:
            os.utime(self.root / env_id / _DONE)
        except OSError:
            pass

    def finished(self) -> list[Finished]:
        """Builds that ended since the last call."""
        out: list[Finished] = []
        while True:
            try:
                done = self._finished.get_nowait()
            except queue.Empty:
                return out
            self._builds.pop(done.env_id, None)
            self.counters["envs_failed" if done.info else "envs_built"] += 1
            out.append(done)
            if done.info is None:
                self._evict(keep=done.env_id)

    def pids(self) -> set[int]:
        """Processes of the builds running now, and of Pythons asked their version."""
        return {b.proc.pid for b in self._builds.values() if b.proc is not None} | \
            _pythons.probes

    def close(self) -> None:
        for build in self._builds.values():
            if build.proc is not None and build.proc.poll() is None:
                build.proc.kill()

    def _start(self, env_id: str, build: _Build) -> None:
        build.running = True
        threading.Thread(target=self._build, args=(env_id, build), daemon=True,
                         name=f"distrib-env-{env_id[:8]}").start()

    def _build(self, env_id: str, build: _Build) -> None:
        spec, target = build.spec, self.root / env_id
        shutil.rmtree(target, ignore_errors=True)
        wheels = self.root / ".wheels" / env_id
        environ = _uv_environ(self.root / ".uv-cache")
        try:
            info = self._run(build, [_uv(), "venv", "--quiet", "--python",
                                     str(self.pythons[spec.python]), str(target)], environ)
            if info is None:
                site = next(target.glob("lib/python*/site-packages"))
                (site / "_distrib_runtime.pth").write_text(f"{self.runtime}\n")
                if not spec.empty:
                    info = self._install(build, target, wheels, environ)
            if info is None:  # (eviction measures the whole cache: no size kept here)
                (target / _DONE).write_text(json.dumps(
                    {"python": spec.python, "packages": spec.summary(50)}))
        except Exception as exc:  # a failed build must reach its tasks, whatever it was
            info = self._error(spec, f"{type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(wheels, ignore_errors=True)
        if info is not None:
            shutil.rmtree(target, ignore_errors=True)
        self._finished.put(Finished(env_id, info, frozenset(build.peers),
                                    time.monotonic() - build.started))
        self._wake()

    def _install(self, build: _Build, target: Path, wheels: Path,
                 environ: dict[str, str]) -> dict[str, str] | None:
        spec, policy = build.spec, self.policy
        args = [_uv(), "pip", "install", "--quiet", "--python", str(target / "bin" / "python")]
        if policy.install == "wheels":
            args += ["--only-binary", ":all:"]
        if policy.index_url:
            args += ["--index-url", policy.index_url]
        if policy.no_index:
            args.append("--no-index")
        for link in policy.find_links:
            args += ["--find-links", link]
        args += [f"{n}=={v}" for n, v in spec.pins]
        wheels.mkdir(parents=True, exist_ok=True)
        for w in spec.wheels:
            path = wheels / w.filename
            shutil.copyfile(self.blob_path(w.digest), path)
            args.append(str(path))
        if spec.file:
            path = wheels / spec.file[0]
            path.write_text(spec.file[1])
            args += ["-r", str(path)]
        index = policy.index_url or _index.PYPI
        why = "" if policy.no_index else _index.unreachable(index)
        if not why:
            return self._run(build, args, environ)
        peer_log.warning("the package index %s cannot be reached (%s): installing from uv's "
                         "cache only", index, why)
        return self._run(build, [*args, "--offline"], environ,
                         _index.advice(index, self._name(), why))

    def _run(self, build: _Build, args: list[str], environ: dict[str, str],
             cause: str = "") -> dict[str, str] | None:
        build.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, text=True, env=environ,
                                      cwd=self.root)
        output, _ = build.proc.communicate()
        if build.proc.returncode == 0:
            return None
        return self._error(build.spec, output, cause)

    def _error(self, spec: EnvSpec, output: str, cause: str = "") -> dict[str, str]:
        text = re.sub(r"\x1b\[[0-9;]*m", "", output).strip()
        lines = [line.rstrip() for line in text.splitlines() if line.strip()]
        named = [f"{n}=={v}" for n, v in spec.pins if re.search(
            rf"(?<![\w-]){re.escape(normalize(n))}(?![\w-])", normalize(text))]
        named += [w.name for w in spec.wheels if normalize(w.name) in normalize(text)]
        what = f" ({', '.join(named[:5])})" if named else ""
        hint = ""
        if self.policy.install == "wheels" and "building from source is disabled" in text:
            hint = ("\n  (this worker installs binary wheels only, --install wheels: a package "
                    "with no wheel for it needs its owner to allow builds with --install any)")
        return ErrorRecord("distrib.DependencyError", (
            f"worker {self._name()} could not build the environment for Python {spec.python} "
            f"with {spec.summary()}{what}" + (f": {cause}" if cause else "")
            + "; the installer said:\n  " + "\n  ".join(lines[-_TAIL:]) + hint), "").to_wire()

    # --- the cache ---------------------------------------------------------------------------

    def _evict(self, keep: str) -> None:
        """Keep the disk built environments and uv's package cache take (files linked from
        both counted once) under ``max_bytes``: first uv's cache goes (environments keep their
        links to its files), then environments, least recently used first, never one in use."""
        limit = self.policy.max_bytes
        if limit is None or _disk_use(self.root) <= limit:
            return
        if not self._builds:  # (a build may be reading it)
            shutil.rmtree(self.root / ".uv-cache", ignore_errors=True)
            log.info("uv's package cache: removed (environments are over --max-envs)")
        built = []
        for done in self.root.glob(f"*/{_DONE}"):
            try:
                built.append((done.stat().st_mtime, done.parent.name))
            except OSError:
                continue
        busy = self._in_use() | {keep} | set(self._builds)
        for _, env_id in sorted(built):
            if _disk_use(self.root) <= limit:
                break
            if env_id in busy:
                continue
            log.info("environment %s: removed (least recently used; environments are over "
                     "--max-envs)", env_id[:12])
            shutil.rmtree(self.root / env_id, ignore_errors=True)
            self._dropped(env_id)

    def _make_runtime(self) -> Path:
        """A folder of links to this daemon's distrib and the packages it needs, for the end
        of executors' ``sys.path`` in built environments."""
        from distrib import _packages

        names = {top for name in _packages.closure({"distrib"})
                 for top in _packages.top_levels(name)}
        spec = importlib.util.find_spec("distrib")
        assert spec is not None and spec.submodule_search_locations
        sources = {"distrib": Path(next(iter(spec.submodule_search_locations)))}
        for name in sorted(names - {"distrib", "uv", "bin"}):
            found = importlib.util.find_spec(name) if name.isidentifier() else None
            if found is not None and found.submodule_search_locations:
                sources[name] = Path(next(iter(found.submodule_search_locations)))
            elif found is not None and found.origin and found.origin != "built-in":
                sources[Path(found.origin).name] = Path(found.origin)
            else:  # a folder of shared libraries (``pyzmq.libs``) beside the packages
                for site in map(Path, sys.path):
                    if (site / name).is_dir():
                        sources[name] = site / name
                        break
        # Built environments name this folder in their .pth: it keeps its path, and each
        # daemon start points its links at the distrib running now.
        runtime = self.root / "runtime"
        runtime.mkdir(exist_ok=True)
        for old in runtime.iterdir():
            if old.is_symlink() and old.name not in sources:
                old.unlink()
        for link, source in sources.items():
            target = runtime / link
            if not target.is_symlink() or target.readlink() != source:
                tmp = runtime / f".{link}.{os.getpid()}"
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(source)
                os.replace(tmp, target)
        return runtime


def _own_versions() -> dict[str, str]:
    """Versions of the distributions this interpreter imports, by normalized name: read from
    the ``name-version.dist-info`` folders' names (parsing every METADATA file takes tens of
    milliseconds, at a Main's Hello), the first on ``sys.path`` winning."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info"):
                dist, _, version = name.removesuffix(".dist-info").partition("-")
                if version:
                    found.setdefault(normalize(dist), version)
    return found


def _disk_use(root: Path) -> int:
    """Bytes of the files under ``root``, a file with several links counted once."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total

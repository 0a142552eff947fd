"""Private writes: what a task writes is seen by that task alone (runs inside an executor).

On Linux the executor enters a mount namespace of its own (inside a user namespace, so no
privilege is needed) and mounts an overlay *over its environment's own path*: the shipped tree
is the read-only lower layer, and every write, by any path and any means (Python, C code, a
subprocess), lands in a scratch upper layer of that executor. Before each task, an upper layer
the previous task wrote to is dropped and a fresh one mounted, so each task starts from the
shipped tree; an untouched one is kept (told by its root's ctime: one ``fstat``), so tiny
tasks stay cheap. Nothing in the shared environment can change, whoever runs the daemon (root
ignores file modes, not mounts). Renaming a shipped folder fails with EXDEV, as on any overlay
an unprivileged process mounts (``shutil.move`` copies it instead).

In a sandbox (the daemon's, ``worker._sandbox``), the tree is a read-only mount the sandbox
made, seen again at a second path (``lower``) below every overlay. There each overlay is
*locked* once mounted: the executor enters a user and mount namespace of its own again, in
which what it inherited cannot be unmounted or made writable, so a task cannot remove its
overlay. A fresh overlay for the next task is then mounted over the locked one (and locked in
turn) rather than in its place. A process may nest 32 user namespaces: after some thirty tasks
that wrote to their tree, an executor's further overlays stay unlocked (a task could unmount
its own to see an earlier task's writes of the same Main; the tree stays read-only).

Where namespaces are not available (another platform, or a kernel that forbids them), each
task gets a private *copy* of the tree as its working folder, renewed when a task changed it;
modules are still imported from the shared tree, so a write through a module's ``__file__``
is not isolated there. The daemon logs which one is used.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

from distrib._scratch import remove_tree

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2
_TICK_NS = 50_000_000  # more than the coarsest file-time tick


class Overlay:
    """Each task sees ``env`` through a fresh overlay; call ``enter()`` before each task."""

    kind = "overlay"

    def __init__(self, env: Path, scratch: Path, lower: str = "") -> None:
        self.env, self.scratch = env, _own(scratch, lower)
        self._lower = lower or str(env)  # the tree every overlay shows (a sandbox's copy)
        self._sandboxed = bool(lower)
        self._locked = False  # whether the overlay in place can no longer be unmounted
        self._options: str | None = None  # what overlays here need besides their layers
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._unshare()  # (the process is single-threaded)
        self._call("mount", None, b"/", None, _MS_REC | _MS_PRIVATE, None)
        self._count = 0
        self._protected: list[Path] = []  # paths protect() covers
        self._upper: Path | None = None
        self._ctime = 0  # the upper layer's ctime when it was mounted
        self._attrs: tuple[object, ...] = ()  # and its other attributes (``_attributes``)
        self._last_start = 0  # when the previous task began (wall clock, ns)
        self._mount()

    def enter(self) -> None:
        """Give the next task a clean view of the environment, and make it the working folder."""
        assert self._upper is not None
        started, self._last_start = self._last_start, time.time_ns()
        if not self._clean(started):
            os.chdir("/")
            os.close(self._env_fd)
            os.close(self._upper_fd)
            if not self._locked:
                self._call("umount2", bytes(self.env), _MNT_DETACH)
            remove_tree(self._upper.parent)  # (a locked one stays mounted, out of sight)
            self._mount()
            self.lock()
        os.fchdir(self._env_fd)  # (by descriptor: no path to resolve before every task)

    def _clean(self, started: int) -> bool:
        """Whether the upper layer is as mounted: no task since wrote through the overlay.

        Every write, at any depth, changes the upper layer's root: a new entry there (the
        copy-up of a top folder, a new file, a whiteout) or its own attributes. Its mtime does
        not tell: a copy-up sets the parent's times back to those it had, and a write into an
        existing folder is such a copy-up. Its ctime does (no call sets a ctime back), provided
        the last task began a clock tick after the layer's ctime was read (times are coarse).
        Else look inside, and at the root's own attributes."""
        st = os.fstat(self._upper_fd)
        if st.st_ctime_ns != self._ctime:
            return False
        if started - self._ctime > _TICK_NS:
            return True
        with os.scandir(self._upper_fd) as entries:
            if next(entries, None) is not None:
                return False
        return _attributes(st, self._upper_fd) == self._attrs

    def after_fork(self) -> None:
        """In an executor forked from a template: a mount namespace of its own, in which the
        template's overlays give way to fresh ones (each executor's writes stay its own)."""
        os.close(self._env_fd)
        os.close(self._upper_fd)
        os.chdir("/")
        if self._sandboxed:  # (a folder of its own: as the daemon counts its writes)
            self.scratch = _own(self.scratch.parent, self._lower)
        self._call("unshare", _CLONE_NEWNS)  # (inside the template's user namespace)
        self._call("mount", None, b"/", None, _MS_REC | _MS_PRIVATE, None)
        self._call("umount2", bytes(self.env), _MNT_DETACH)
        protected, self._protected = self._protected, []
        for path in protected:
            self._call("umount2", bytes(path), _MNT_DETACH)
            self.protect(path)
        self._count = 0
        self._mount()
        self.lock()

    def lock(self) -> None:
        """In a sandbox: make the mounts in place, this overlay's too, impossible to undo
        from here on (a namespace inside the current one: its inherited mounts are locked).
        Called once the process's own setup is done, before any task runs."""
        if not self._sandboxed:
            return
        try:
            self._unshare()
        except OSError:  # (too deeply nested: this overlay stays as it is, unlocked)
            self._locked = False
            return
        self._locked = True
        assert self._upper is not None
        self._env_fd: int = _reopen(self._env_fd, self.env)  # (its root, seen from here)
        self._upper_fd: int = _reopen(self._upper_fd, self._upper)

    def _unshare(self) -> None:
        """Enter a user and mount namespace of its own, with the same ids inside."""
        uid, gid = os.getuid(), os.getgid()
        self._call("unshare", _CLONE_NEWUSER | _CLONE_NEWNS)
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")

    def protect(self, path: Path) -> None:
        """Mount an overlay over ``path`` too, for this executor's life: writes to it (a
        built Python environment, whose files are links into a package cache that other
        environments share) stay in this executor's scratch."""
        layer = self.scratch / f"{os.getpid()}-{path.name}"
        upper, work = layer / "upper", layer / "work"
        upper.mkdir(parents=True)
        work.mkdir()
        self._overlay(path, f"lowerdir={path},upperdir={upper},workdir={work}")
        self._protected.append(path)

    def written(self) -> list[str]:
        """Relative paths of the files the current task created or changed."""
        assert self._upper is not None
        return _files(self._upper, lambda st: stat.S_ISREG(st.st_mode))  # (not whiteouts)

    @property
    def folder(self) -> Path:
        """The task's working folder."""
        return self.env

    def _mount(self) -> None:
        self._count += 1
        layer = self.scratch / f"{os.getpid()}-{self._count}"
        upper, work = layer / "upper", layer / "work"
        upper.mkdir(parents=True)
        work.mkdir()
        self._overlay(self.env, f"lowerdir={self._lower},upperdir={upper},workdir={work}")
        self._upper = upper
        self._upper_fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
        self._env_fd = os.open(self.env, os.O_RDONLY | os.O_DIRECTORY)  # the overlay's root
        st = os.fstat(self._upper_fd)
        self._ctime, self._attrs = st.st_ctime_ns, _attributes(st, self._upper_fd)
        os.chdir(self.env)  # the old working folder is the tree under the mount

    def _overlay(self, target: Path, options: str) -> None:
        """Mount an overlay that keeps its own attributes (a removed folder's whiteout, an
        opaque folder) in ``user.`` xattrs (``userxattr``): in a user namespace the kernel
        mounts one without, but then cannot write its ``trusted.`` ones, and removing a
        shipped folder fails (EIO). A kernel before 5.11 lacks the option."""
        choices = [self._options] if self._options is not None else ["userxattr,", ""]
        for i, extra in enumerate(choices):
            try:
                self._call("mount", b"overlay", bytes(target), b"overlay", 0,
                           f"{extra}{options}".encode())
            except OSError:
                if i == len(choices) - 1:
                    raise
                continue
            self._options = extra
            return

    def _call(self, name: str, *args: object) -> None:
        if getattr(self._libc, name)(*args) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{name}: {os.strerror(code)}")


class Copies:
    """Each task works in a private copy of ``env``, renewed when a task changed it."""

    kind = "copy"

    def __init__(self, env: Path, scratch: Path) -> None:
        self.env, self.scratch = env, scratch
        self._count = 0
        self._current: Path | None = None
        self._snapshot: dict[str, tuple[int, ...]] = {}

    def enter(self) -> None:
        if self._current is None or _snapshot(self._current) != self._snapshot:
            if self._current is not None:
                os.chdir(self.scratch)
                remove_tree(self._current)
            self._count += 1
            self._current = self.scratch / f"{os.getpid()}-{self._count}"
            shutil.copytree(self.env, self._current, symlinks=True)
            self._snapshot = _snapshot(self._current)
        os.chdir(self._current)

    def written(self) -> list[str]:
        """Relative paths of the files the current task created or changed."""
        assert self._current is not None
        before = {os.path.relpath(p, self._current): v for p, v in self._snapshot.items()}
        now = _snapshot(self._current)
        return sorted(os.path.relpath(p, self._current) for p, v in now.items()
                      if before.get(os.path.relpath(p, self._current)) != v
                      and os.path.isfile(p))

    @property
    def folder(self) -> Path:
        """The task's working folder."""
        assert self._current is not None
        return self._current


def _files(root: Path, keep: Callable[[os.stat_result], bool]) -> list[str]:
    out = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if keep(os.lstat(path)):
                out.append(os.path.relpath(path, root))
    return sorted(out)


def _attributes(st: os.stat_result, fd: int) -> tuple[object, ...]:
    """What a task may change of a folder (``st``, open as ``fd``) besides its entries."""
    try:
        xattrs = sorted(os.listxattr(fd))
    except OSError:  # (a file system without them)
        xattrs = []
    return st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, xattrs


def _own(scratch: Path, lower: str) -> Path:
    """Where this process keeps its layers: ``scratch``, or in a sandbox (``lower``) its own
    folder there, named by its pid in the sandbox (``worker._sandbox.layers``)."""
    if not lower:
        return scratch
    own = scratch / f"ex-{os.getpid()}"
    own.mkdir(exist_ok=True)
    return own


def _reopen(fd: int, path: Path) -> int:
    os.close(fd)
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def start(env: Path, scratch: Path, lower: str = "") -> Overlay | Copies:
    """The best isolation this platform allows (call while the process has one thread);
    ``lower``: the sandbox's second view of the tree, if in one."""
    try:
        return Overlay(env, scratch, lower)
    except (OSError, AttributeError):
        return Copies(env, scratch)


def _snapshot(root: Path) -> dict[str, tuple[int, ...]]:
    """Every entry of the tree, the root too, as what a write changes: its ctime (no call sets
    it back) besides size, mtime and mode (ctimes are coarse)."""
    def entry(path: str) -> tuple[int, ...]:
        st = os.lstat(path)
        return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode

    out = {str(root): entry(str(root))}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            out[os.path.join(folder, name)] = entry(os.path.join(folder, name))
    return out

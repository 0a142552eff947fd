"""The sandbox executors run in: what a task may see and reach on a lent machine, and how it
is built (bubblewrap where it is installed, else Linux namespaces made here).

A sandbox holds one process (a template and the executors it forks, or one spawned
executor) and everything it starts, for one Main and one environment. Inside, a task sees:

- the system read-only (``/usr``, ``/lib*``, ``/bin``, ``/sbin``, the parts of ``/etc``
  programs need), the Python installations it runs with and a built environment read-only;
- its environment's tree read-only, under the overlay that keeps its writes private;
- the Main's shared objects read-only, its own scratch folder, a private ``/tmp`` and
  ``/dev`` (``/dev/shm`` of the machine only for a Main that shares it);
- its own PID namespace (it is process 1's descendant there and sees no other process), its
  own IPC and host name, and no network unless the owner allows it.

Nothing else of the worker's cache (keys, authorized keys, control socket, logs, other Mains'
runs and trees) exists inside. The process starts with no capability (and cannot gain one by
``execve``); the mounts it inherits are locked (a user namespace it makes, to mount its
overlay, cannot undo them).

bubblewrap is run as ``bwrap --as-pid-1 --info-fd``; without it, ``_sandbox_exec.py`` (a
script of the standard library only, so no code of a Main runs before it) does the same with
``unshare``, ``mount`` and ``pivot_root``. Either says the process's pid (in the daemon's
namespace) on a pipe, so the daemon signals, measures and waits for the process itself.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from msgspec import Struct

from distrib import _process
from distrib._errors import ConfigError
from distrib._scratch import remove_tree

log = logging.getLogger("distrib.worker")

NETWORKS = ("none", "loopback", "all")
LOWER = "/run/distrib/tree"  # the environment's tree again, below each task's overlay
SANDBOX_VAR = "DISTRIB_SANDBOX"  # tells the executor it is sandboxed (and where LOWER is)
# Which builders may be tried, in order (a comma-separated list; "none": none): to test one
BUILDERS_VAR = "DISTRIB_SANDBOX_BUILDERS"
ROOT_INSIDE = 1000  # the user id root has in a sandbox
START_TIMEOUT = 30.0  # seconds a sandbox may take to say its process's pid
_LAUNCHER = Path(__file__).with_name("_sandbox_exec.py")
_ETC = ("passwd", "group", "hosts", "host.conf", "nsswitch.conf", "resolv.conf", "gai.conf",
        "localtime", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates",
        "pki", "alternatives", "mime.types", "os-release", "timezone", "protocols", "services")
_SYSTEM = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin")


def check_network(value: str, where: str) -> str:
    """``value`` if it is a network setting, else ConfigError naming ``where``."""
    if value not in NETWORKS:
        raise ConfigError(f"{where}={value!r}: expected none (no network), loopback (this "
                          "machine's services) or all")
    return value


class Box(Struct, frozen=True):
    """What the processes of one Main's environment see besides the system: their tree,
    their scratch folder (read-write), more read-only paths, and their network."""

    env: Path
    scratch: Path
    reads: tuple[Path, ...]
    network: str
    shm: bool


class Boxed:
    """The process in a sandbox, as ``subprocess.Popen`` offers it: ``pid`` is its own (in
    the daemon's namespace); it ends with its sandbox's launcher, which this waits for. Its
    scratch folder goes once it ended."""

    def __init__(self, launcher: subprocess.Popen[bytes], pid: int, scratch: Path) -> None:
        self.launcher, self.pid, self.scratch = launcher, pid, scratch

    @property
    def returncode(self) -> int | None:
        return self.launcher.returncode

    def poll(self) -> int | None:
        code = self.launcher.poll()
        if code is not None:
            remove_tree(self.scratch)
        return code

    def wait(self, timeout: float | None = None) -> int:
        code = self.launcher.wait(timeout)
        remove_tree(self.scratch)
        return code

    def send_signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)  # (its sandbox ends with it: the launcher exits)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.send_signal(9)
        self.launcher.kill()


class Sandboxes:
    """How this daemon builds sandboxes: ``kind`` is "bubblewrap" or "namespaces"."""

    def __init__(self, kind: str, bwrap: str = "") -> None:
        self.kind, self.bwrap = kind, bwrap

    def describe(self) -> str:
        if self.kind == "bubblewrap":
            return f"bubblewrap ({self.bwrap})"
        return "Linux namespaces built by distrib (no bubblewrap)"

    def start(self, box: Box, argv: list[str], environ: dict[str, str],
              pass_fds: tuple[int, ...], cwd: Path) -> Boxed:
        """Start ``argv`` in a new sandbox of ``box``."""
        read_end, write_end = os.pipe()
        environ = {**environ, SANDBOX_VAR: LOWER, "HOME": "/tmp", "TMPDIR": "/tmp"}
        spec = _mounts(box)
        if self.kind == "bubblewrap":
            command = [self.bwrap, *_bwrap_args(spec, box, cwd), "--info-fd", str(write_end),
                       "--", *argv]
        else:
            command = [sys.executable, "-I", "-S", str(_LAUNCHER), json.dumps({
                "mounts": spec, "network": box.network != "none", "cwd": str(cwd),
                "uid": inside_uid(),
                "info": write_end, "root": str(box.scratch / "root")}), "--", *argv]
        try:
            launcher = subprocess.Popen(command, pass_fds=(*pass_fds, write_end),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        env=environ, cwd="/")
        finally:
            os.close(write_end)
        try:
            pid = _read_pid(read_end)
        except OSError:
            launcher.kill()
            launcher.wait()
            remove_tree(box.scratch)
            raise
        finally:
            os.close(read_end)
        return Boxed(launcher, pid, box.scratch)


def _read_pid(fd: int) -> int:
    data = b""
    while b"}" not in data:
        if not _process.readable(fd, START_TIMEOUT):
            raise OSError("the sandbox did not start in time")
        part = os.read(fd, 4096)
        if not part:
            raise OSError("the sandbox did not start (see the worker's log)")
        data += part
    try:
        return int(json.loads(data[:data.index(b"}") + 1])["child-pid"])
    except (ValueError, KeyError) as exc:
        raise OSError(f"the sandbox said {data[:200]!r}") from exc


def _mounts(box: Box) -> list[list[str]]:
    """What the sandbox holds, in order: [how, source, target]."""
    tmp = box.scratch / "tmp"  # (on disk, counted in the cache: not a tmpfs, in memory)
    tmp.mkdir(mode=0o1777, exist_ok=True)
    out: list[list[str]] = [["proc", "", "/proc"], ["dev", "", "/dev"],
                            ["rw", str(tmp), "/tmp"]]
    out += [["ro", p, p] for p in _SYSTEM if os.path.exists(p)]
    out += [["ro", f"/etc/{name}", f"/etc/{name}"] for name in _ETC
            if os.path.exists(f"/etc/{name}")]
    out += [["ro", str(p), str(p)] for p in _covering(box.reads)]
    out += [["ro", str(box.env), str(box.env)], ["ro", str(box.env), LOWER],
            ["rw", str(box.scratch), str(box.scratch)]]
    if box.shm and os.path.isdir("/dev/shm"):
        out.append(["rw", "/dev/shm", "/dev/shm"])
    return out


def _covering(paths: tuple[Path, ...]) -> list[Path]:
    """``paths`` that exist, without those inside another or inside the system folders."""
    found = sorted({Path(os.path.abspath(p)) for p in paths if os.path.exists(p)})
    out: list[Path] = []
    for path in found:
        if any(path == Path(s) or Path(s) in path.parents for s in _SYSTEM):
            continue
        if not any(o == path or o in path.parents for o in out):
            out.append(path)
    return out


def _bwrap_args(spec: list[list[str]], box: Box, cwd: Path) -> list[str]:
    args = ["--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
            "--as-pid-1", "--cap-drop", "ALL", "--chdir", str(cwd), "--uid", str(inside_uid())]
    if box.network != "none":
        args.append("--share-net")
    for how, source, target in spec:
        if how == "ro":
            args += ["--ro-bind", source, target]
        elif how == "rw":
            args += ["--bind", source, target]
        else:
            args += [f"--{how}", target]
    return [*args, "--remount-ro", "/"]


def inside_uid() -> int:
    """The user id the sandbox's process has inside: its own, but never 0. (A user namespace
    made inside, as an executor makes to mount its overlays, may map its maker's id only if
    that id is not the outer namespace's root, unless its maker had CAP_SETFCAP.)"""
    return os.getuid() or ROOT_INSIDE


def reads(python: Path | None, cache: Path) -> tuple[Path, ...]:
    """The read-only paths the interpreter of a recipe needs: this daemon's installation and
    what its ``sys.path`` names (distrib's source, say), and a built environment with the
    installation it was made from and the folder its ``.pth`` names; none that holds the
    worker's ``cache`` (the folder it was started in, on ``sys.path``, may)."""
    out = [Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable).resolve().parent]
    out += [Path(p) for p in sys.path if p and os.path.isdir(p)]
    if python is not None:
        venv = python.parent.parent
        out += [venv, venv.parent / "runtime", python.resolve().parent.parent]
        try:
            for line in (venv / "pyvenv.cfg").read_text().splitlines():
                name, _, value = line.partition("=")
                if name.strip() == "home":
                    out.append(Path(value.strip()).parent)
        except OSError:
            pass
    # (and where each leads: a venv linked from inside a folder that is bound whole, such as
    # the worker's own, is not bound again, and its link would lead nowhere in the sandbox)
    out += [Path(os.path.realpath(p)) for p in out]
    cache = Path(os.path.abspath(cache))
    return tuple(p for p in out if p.is_absolute() and p != cache and p not in cache.parents)


def layers(pid: int) -> str:
    """The folder of a sandbox's scratch where its process ``pid`` (as the sandbox numbers
    it) keeps its task layers (the disk watcher counts it as that executor's)."""
    return f"ex-{pid}"


def scratch(runs: Path) -> Path:
    """A new folder under ``runs`` for one sandbox's writes."""
    return Path(tempfile.mkdtemp(prefix="box-", dir=runs))


def detect() -> Sandboxes | None:
    """The sandbox this machine can build (trying one), or None; logs why not."""
    if not sys.platform.startswith("linux"):
        log.warning("no sandbox on %s (it needs Linux namespaces)", sys.platform)
        return None
    bwrap = shutil.which("bwrap")
    allowed = os.environ.get(BUILDERS_VAR, "bubblewrap,namespaces").split(",")
    kinds = [Sandboxes("bubblewrap", bwrap)] if bwrap and "bubblewrap" in allowed else []
    kinds += [Sandboxes("namespaces")] if "namespaces" in allowed else []
    with tempfile.TemporaryDirectory(prefix="distrib-probe-") as folder:
        for sandboxes in kinds:
            box = Box(Path(folder), Path(scratch(Path(folder))), (), "none", False)
            try:
                boxed = sandboxes.start(box, ["/bin/true"], dict(os.environ), (), Path("/"))
                code = boxed.wait(START_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.info("cannot build a sandbox with %s: %s", sandboxes.describe(), exc)
                continue
            if code == 0:
                return sandboxes
            log.info("cannot build a sandbox with %s (exit code %d)", sandboxes.describe(),
                     code)
    return None


class Probe:
    """``detect()`` in a thread of its own, started early: a daemon's start imports its modules
    and checks its flags meanwhile, where the probe (a sandboxed ``/bin/true``, 50-100 ms) is
    mostly waiting. ``result()`` waits for it, and says what ``detect()`` would have."""

    def __init__(self) -> None:
        self._found: Sandboxes | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="distrib-sandbox-probe",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._found = detect()
        except BaseException as exc:  # (raised where the result is asked for, as before)
            self._error = exc

    def join(self) -> None:
        """Wait for the probe to end (its process, and its folder removed)."""
        self._thread.join()

    def result(self) -> Sandboxes | None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._found

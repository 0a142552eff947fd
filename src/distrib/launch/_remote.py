"""What runs on a launched host: the bootstrap a Main sends over SSH, as source, to the Python
it found there. Standard library only (distrib is not installed there yet).

It speaks JSON lines on stdout and reads the Main's answers on stdin::

    host -> Main   {"hello": {"have": [wheel digests already cached here]}}
    Main -> host   {"wheels": [[digest, filename, size], ...], "venv": id, ...}  + the bytes
                   of each wheel not cached, in that order
    host -> Main   {"key": worker public key}            (venv built, worker key made)
    Main -> host   {"port": the tunnel's port on this host}
    host -> Main   {"ready": the worker's ready line}    then the worker's log on stderr
    host -> Main   {"error": what failed}                (at any step; then it exits)

The worker lives as long as this process, and this process as long as its stdin: the SSH
session closing (the Main exits, is killed, or the connection drops) ends both.
"""

import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

STOP_GRACE = 5.0  # seconds a worker has to stop after SIGTERM before SIGKILL


def say(**message: object) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def fail(text: str) -> None:
    say(error=text)
    sys.exit(1)


def read_line(stdin: object) -> dict:  # type: ignore[type-arg]
    line = stdin.readline()  # type: ignore[attr-defined]
    if not line:
        sys.exit(0)  # the Main went away
    return json.loads(line)  # type: ignore[no-any-return]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "distrib" / "launch"


def install_wheel(wheel: Path, venv: Path) -> None:
    """Unpack a wheel into the venv, as an installer does: the archive is the site-packages
    tree; ``<name>.data/scripts`` goes to ``bin`` and ``purelib``/``platlib`` to site-packages."""
    site = next(venv.glob("lib/python*/site-packages"))
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            parts = info.filename.split("/")
            if ".." in parts or info.filename.startswith("/"):
                raise OSError(f"{wheel.name}: unsafe path {info.filename}")
            target = site / info.filename
            if len(parts) > 2 and parts[0].endswith(".data"):
                where = {"scripts": venv / "bin", "purelib": site, "platlib": site}.get(parts[1])
                if where is None:
                    continue
                target = where / "/".join(parts[2:])
            if info.is_dir():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = info.external_attr >> 16
            if mode & 0o111 or target.parent == venv / "bin":
                target.chmod(0o755)


def build_venv(venv: Path, wheels: list[Path]) -> None:
    """A venv with these wheels in it, unless one is there; under a lock, so two Mains
    launching on this host at once build it once."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / "ready").exists():
            return
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                       check=True, capture_output=True)
        for wheel in wheels:
            install_wheel(wheel, venv)
        (venv / "ready").write_text("")


def receive_wheels(stdin: object, root: Path, wanted: list[list[object]],
                   had: set[str]) -> list[Path]:
    """The wheels of the order: those not in ``had`` (as said in the hello) follow on stdin,
    whatever arrived meanwhile (a home folder shared by several hosts)."""
    store = root / "wheels"
    store.mkdir(parents=True, exist_ok=True)
    paths = []
    for digest, filename, size in wanted:
        folder = store / str(digest)
        path = folder / str(filename)
        if digest not in had:
            data = stdin.read(int(size))  # type: ignore[attr-defined,call-overload]
            if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                fail(f"wheel {filename} arrived incomplete")
            folder.mkdir(exist_ok=True)
            part = folder / f".{filename}.{os.getpid()}"  # (unique: hosts may share it)
            part.write_bytes(data)
            os.replace(part, path)
        paths.append(path)
    return paths


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_lasting(root: Path) -> str:
    """Stop the lasting worker started here (``--persist``), if one runs."""
    pidfile = root / "lasting.pid"
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return "no lasting worker here"
    if not _alive(pid):
        pidfile.unlink(missing_ok=True)
        return "no lasting worker was running"
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3 * STOP_GRACE
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return f"stopped the lasting worker (pid {pid})"


def start_lasting(root: Path, argv: list[str]) -> None:
    """A worker that outlives this session (``--persist``): the one before it stops first."""
    stop_lasting(root)
    logfile = root / "lasting.log"
    with open(logfile, "wb") as log:
        worker = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    (root / "lasting.pid").write_text(str(worker.pid))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in logfile.read_text(errors="replace").splitlines():
            if line.startswith("distrib worker ") and " ready on " in line:
                say(ready=line)
                return
        if worker.poll() is not None:
            fail(f"the worker did not start: {logfile.read_text(errors='replace')[-500:]}")
        time.sleep(0.05)
    fail(f"the worker was not ready within 120 s (its log: {logfile})")


def main() -> None:
    stdin = sys.stdin.buffer
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        store = root / "wheels"
        have = sorted(p.name for p in store.iterdir()) if store.is_dir() else []
        say(hello={"have": have, "python": sys.version.split()[0],
                   "platform": f"{sys.platform} {platform.machine()}"})
        order = read_line(stdin)
        if order.get("down"):
            say(stopped=stop_lasting(root))
            return
        wheels = receive_wheels(stdin, root, order["wheels"], set(have))
        venv = root / "venvs" / order["venv"]
        build_venv(venv, wheels[:order["distrib_wheels"]])
        python = str(venv / "bin" / "python")
        links = root / "find-links"  # the Main's other packages, for the worker's environments
        links.mkdir(exist_ok=True)
        for wheel in wheels[order["distrib_wheels"]:]:
            if not (links / wheel.name).exists():
                part = links / f".{wheel.name}.{os.getpid()}"
                shutil.copyfile(wheel, part)
                os.replace(part, links / wheel.name)
        key = root / "worker.key"
        if not key.exists():
            subprocess.run([python, "-m", "distrib", "keygen", str(key)], check=True,
                           capture_output=True)
        mains = root / ("lasting.authorized" if order.get("persist")
                        else f"mains-{os.getpid()}.authorized")
        mains.write_text(order["main_key"] + "\n")
    except OSError as exc:
        fail(f"cannot install distrib under {root}: {exc.strerror or exc}")
    except subprocess.CalledProcessError as exc:
        fail(f"cannot install distrib under {root}: {' '.join(exc.cmd[:3])} failed: "
             f"{(exc.stderr or b'').decode(errors='replace').strip()[-300:]}")
    say(key=(root / "worker.key.pub").read_text().split()[0])
    port = read_line(stdin)["port"]  # (said once this worker's key is authorized)
    if order.get("persist"):  # dials the Main's own address, as this session came from it
        client = os.environ.get("SSH_CLIENT", "").split()
        if not client:
            fail("no SSH_CLIENT here: cannot tell the Main's address")
        dial = f"[{client[0]}]:{port}" if ":" in client[0] else f"{client[0]}:{port}"
    else:
        dial = f"127.0.0.1:{port}"
    argv = [python, "-m", "distrib", "worker", "--listen", "127.0.0.1:0", "--key", str(key),
            "--authorized-keys", str(mains), "--connect", dial,
            "--main-key", order["main_key"], "--name", order["name"]]
    if order["threads"]:
        argv += ["--threads", str(order["threads"])]
    if order["wheels"][order["distrib_wheels"]:]:
        argv += ["--find-links", str(links)]
    argv += order["args"]
    if order.get("persist"):
        start_lasting(root, argv)
        return
    argv += ["--exit-with-parent", str(os.getpid())]
    worker = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              start_new_session=True)
    assert worker.stdout is not None
    ready = worker.stdout.readline().decode(errors="replace").strip()
    if not ready:
        worker.wait()
        mains.unlink(missing_ok=True)
        fail(f"the worker did not start (exit status {worker.returncode}; its log is above)")
    say(ready=ready)

    def watch() -> None:  # the worker ending on its own ends this session too
        worker.wait()
        mains.unlink(missing_ok=True)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    while stdin.read(65536):  # until the SSH session closes
        pass
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
    mains.unlink(missing_ok=True)


if __name__ == "__main__":
    main()

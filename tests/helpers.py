"""Helpers the tests share: real processes, polling with a deadline, user workspaces."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distrib.main import _status
from distrib.wire._keys import KeyPair

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tests" / "payloads" / "tasks.py"
PYTHON = sys.executable
START_TIMEOUT = 60.0


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds.
    Between looks it waits 50 ms; after a look of more than 0.2 s, as long as that look took
    (up to a second): a look that starts a process (``distrib status`` in a namespace host,
    say) then takes half the CPU it took back to back, on cores the whole suite shares."""
    deadline = time.monotonic() + timeout
    while True:
        began = time.monotonic()
        value = condition()
        if value:
            return value
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        spent = now - began
        time.sleep(min(spent if spent > 0.2 else 0.05, 1.0, max(0.0, deadline - now)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Worker:
    """A `distrib worker` daemon started as a separate process."""

    proc: subprocess.Popen[str]
    address: str
    name: str
    cache_dir: Path
    log_file: Path
    public_key: str | None = None

    def log(self) -> str:
        return self.log_file.read_text()

    @property
    def pid(self) -> int:
        return self.proc.pid

    status_key: KeyPair | None = None  # a Main key the worker authorizes, for status queries

    def status(self, timeout: float = 30.0) -> dict[str, Any]:
        return query_status(self.address, timeout, self.public_key, self.status_key)

    def stacks(self, timeout: float = 30.0) -> str:
        """What each of the daemon's threads is doing, as SIGUSR1 makes it write to its log:
        once the main thread's stack is written, down to the module ``-m`` ran (whichever
        thread took the signal, it is "Current thread", and may come before or after it)."""
        before = len(self.log())
        self.proc.send_signal(signal.SIGUSR1)

        def whole() -> str:
            text = self.log()[before:]
            return text if " in _run_module_as_main" in text else ""

        return wait_for(whole, timeout, f"the stacks of worker {self.name} in its log")

    def stop(self) -> None:
        stop_process(self.proc)


def query_status(address: str, timeout: float = 30.0, server_key: str | None = None,
                 key: KeyPair | None = None) -> dict[str, Any]:
    """Ask a worker for its Status over a real socket."""
    answer = _status.query(address, server_key, key, timeout)
    assert answer.reachable, f"worker at {address}: {answer.problem}"
    return answer.info


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def finish(proc: subprocess.Popen[str], timeout: float = 180.0) -> tuple[str, str]:
    """Wait for a script started with pipes; kill it if it overruns. Asserts it succeeded."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return out, err


@contextmanager
def ended(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """Kill and reap ``proc`` if the block leaves it running (a failed assertion, say), and
    close its pipes either way (an unread pipe closed later warns in another test)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@dataclass
class Workspace:
    """A temporary project folder holding a user's script and modules."""

    root: Path
    cache_dir: Path

    def write(self, relpath: str, text: str) -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def run(self, script: str, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120.0, python: str | Path = PYTHON
            ) -> subprocess.CompletedProcess[str]:
        """Run ``python script`` here, as a user would, and return what it printed."""
        full_env = {**os.environ, "DISTRIB_CACHE_DIR": str(self.cache_dir),
                    "DISTRIB_LOCAL_THREADS": "2", **(env or {})}
        return subprocess.run([str(python), script, *args], cwd=self.root, env=full_env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, script: str, worker: Worker | str, *args: str) -> subprocess.Popen[str]:
        """Start ``python script args`` here with ``worker`` (or that address) its worker, its
        pipes open (its stdin too: a script that waits on it stays connected until the test
        closes it)."""
        env = {**os.environ, "DISTRIB_CACHE_DIR": str(self.cache_dir),
               "DISTRIB_WORKERS": worker if isinstance(worker, str) else worker.address}
        return subprocess.Popen([PYTHON, script, *args], cwd=self.root, env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)


UV = str(Path(PYTHON).parent / "uv")


def make_wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """Write a pure-Python wheel of ``files`` (path in the wheel -> source) into ``folder``."""
    info = f"{name}-{version}.dist-info"
    contents = {path: text.encode() for path, text in files.items()}
    contents[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {name}\n"
                                    f"Version: {version}\n").encode()
    contents[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: "
                                 b"true\nTag: py3-none-any\n")
    record = "".join(f"{path},sha256={_b64_sha256(data)},{len(data)}\n"
                     for path, data in contents.items())
    contents[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for arc, data in contents.items():
            zf.writestr(arc, data)
    return path


def _b64_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def layered_venv(path: Path, wheels: Path | None = None, packages: tuple[str, ...] = (),
                 python: str = PYTHON) -> Path:
    """A virtualenv that sees the test environment's packages (distrib among them) behind its
    own, with ``packages`` installed offline from ``wheels``; returns its interpreter."""
    subprocess.run([UV, "venv", "-q", "--python", python, str(path)], check=True)
    site = next(path.glob("lib/python*/site-packages"))
    base = next(Path(PYTHON).parent.parent.glob("lib/python*/site-packages"))
    (site / "zz_test_base.pth").write_text(f"import site; site.addsitedir({str(base)!r})\n")
    if packages:
        subprocess.run([UV, "pip", "install", "-q", "--python", str(path / "bin" / "python"),
                        "--no-index", "--find-links", str(wheels), *packages], check=True)
    return path / "bin" / "python"


def with_tasks(ws: Workspace) -> Workspace:
    """Copy the shared task functions (tests/payloads/tasks.py) into ``ws`` as tasks.py."""
    shutil.copy(TASKS, ws.root / "tasks.py")
    return ws


@contextmanager
def raw_main(worker: Worker, name: str, shm: bool = False) -> Iterator[Any]:
    """A Main built by hand from the project's own codec (a hostile one, say): a DEALER that
    has said Hello and been served; closed at the end. ``shm``: it proves it shares
    /dev/shm (its probe file is this process's, removed at the end)."""
    import zmq

    from distrib import _shm
    from distrib.wire import _codec, _facts
    from distrib.wire import _messages as m
    from distrib.wire._envspec import EnvSpec

    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(worker.address)
        probe = _shm.probe(os.getpid()) if shm else None
        sock.send_multipart(_codec.encode(m.Hello(
            m.PROTOCOL_VERSION, name, name, _facts.python_version(),
            os.getpid() if probe else 1, False, [], {},
            EnvSpec(_facts.python_version()).encode(), 1 << 20, [], 0,
            [probe[0].name, probe[1]] if probe else [])))
        wait_for(lambda: name in worker.status()["mains"], what=f"the raw Main {name} served")
        yield sock
    finally:
        sock.close(0)
        ctx.term()
        if shm:
            _shm.remove_of(os.getpid())


def rewrite_keeping_size_and_times(path: Path, data: bytes) -> None:
    """Rewrite a file in place (through every link to it), its size and times kept."""
    before = path.stat()
    assert len(data) == before.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

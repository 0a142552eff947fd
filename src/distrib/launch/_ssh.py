"""Workers on SSH hosts: one ``ssh`` session per host, through the system's OpenSSH client (so
the user's config, agent, jump hosts and known-hosts checks apply), that installs distrib
there and runs a worker dialling this Main back through the session's reverse tunnel.

Per host, in a thread of its own::

    ssh -R 0:127.0.0.1:<Main's port> HOST 'sh -c <find a Python X.Y, run the bootstrap>'
      -> the bootstrap (``_remote.py``, sent on stdin) says which wheels it has
      -> the missing wheels go on stdin; it builds its venv, makes the worker's key
      -> that key joins the Main's authorized workers; ssh says which port it allocated
      -> the worker starts, dials 127.0.0.1:<that port>, is ready

The worker lives as long as the session: closing the session's stdin (this Main exits, or is
killed and the kernel closes it) stops the worker, and the tunnel goes with the session. A
host that fails is reported in one line naming it; the others go on.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from distrib.launch import _records

if TYPE_CHECKING:
    from distrib.launch import _wheels
    from distrib.launch._target import Target


log = logging.getLogger("distrib")

NO_PYTHON = 97  # the remote shell's exit status when no usable Python was found
_ALLOCATED = re.compile(r"Allocated port (\d+) for remote forward")
_BOOT = ("import sys; n = int(sys.stdin.buffer.readline()); "
         "exec(compile(sys.stdin.buffer.read(n), 'distrib-launch', 'exec'))")


def split_host(host: str) -> tuple[str, str | None]:
    """``user@host:port`` -> (``user@host``, ``port``); a name from ~/.ssh/config stays whole."""
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        if port.isdigit():
            return name, port
    if host.startswith("[") and "]:" in host:  # [v6 address]:port
        name, _, port = host[1:].partition("]:")
        return name, port
    return host, None


def remote_command(version: str) -> str:
    """The command the remote shell runs: find Python ``version`` and run the bootstrap."""
    major, minor = version.split(".")[:2]
    want = f"{major}.{minor}"
    script = f"""
for p in python{want} python3 "$HOME"/.pyenv/versions/{want}*/bin/python{want} \\
         /usr/local/bin/python{want} /usr/bin/python{want}; do
    if "$p" -c 'import sys; sys.exit(sys.version_info[:2] != ({major}, {minor}))' 2>/dev/null
    then exec "$p" -c {shlex.quote(_BOOT)}
    fi
done
exit {NO_PYTHON}
"""
    return f"sh -c {shlex.quote(script)}"


@dataclass
class Host:
    """One host's session as it stands."""

    name: str
    proc: subprocess.Popen[bytes] | None = None
    key: str = ""  # the worker's public key there
    ready: str = ""  # the worker's ready line
    problem: str = ""  # why no worker started there
    port: int = 0  # the reverse tunnel's port on the host
    allocated: threading.Event = field(default_factory=threading.Event)
    stderr: list[str] = field(default_factory=list)  # ssh's last lines, for the problem
    reader: threading.Thread | None = None  # reads ssh's stderr until the session ends


class SSHLaunch:
    """The sessions of one ``SSH`` cluster: started by ``start``, ended by ``stop``."""

    def __init__(self, hosts: Sequence[str], threads: int | None, ssh_config: str | None,
                 options: Sequence[str], worker_args: Sequence[str], timeout: float,
                 mode: str = "session") -> None:
        self.hosts = [Host(h) for h in hosts]
        self.threads = threads
        self.ssh_config = ssh_config
        self.options = list(options)
        self.worker_args = list(worker_args)
        self.timeout = timeout
        # "session": workers live as long as their SSH sessions, dialling through them;
        # "persist": lasting workers that dial the Main's address; "down": stop those.
        self.mode = mode
        self._lock = threading.Lock()  # the authorized file is appended to by each host
        self._last_mtime = 0
        self._record: _records.Record | None = None  # what `distrib status` shows of it

    def start(self, target: Target) -> None:
        """Start a worker on every host; return once each is ready or has failed (each
        failure logged in one line naming its host)."""
        from distrib.launch import _wheels  # (packaging: imported when a launch needs it)

        own, extra = ([], []) if self.mode == "down" else _wheels.for_hosts(
            target.cache, list(target.packages))
        threads = [threading.Thread(target=self._launch, args=(h, target, own, extra),
                                    name=f"distrib-ssh-{h.name}", daemon=True)
                   for h in self.hosts]
        for t in threads:
            t.start()
        deadline = time.monotonic() + self.timeout
        for t, host in zip(threads, self.hosts):
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive() and not host.ready and not host.problem:
                host.problem = f"no worker ready within {self.timeout:.0f} s"
                self._end(host)
        for host in self.hosts:
            if host.problem:
                log.warning("%s: %s: %s", host.name, "not stopped" if self.mode == "down"
                            else "no worker started", host.problem)
        if self.mode == "session":
            self._record = _records.Record(target.cache, "ssh")
            self._record.write([{"where": h.name, "state": f"failed: {h.problem}" if h.problem
                                 else "ready"} for h in self.hosts])

    def ready(self) -> list[Host]:
        return [h for h in self.hosts if h.ready and not h.problem]

    def stop(self) -> None:
        """End every session: each host's worker stops, and its tunnel with it."""
        for host in self.hosts:  # (all told first: they stop side by side)
            if host.proc is not None and host.proc.stdin is not None:
                try:
                    host.proc.stdin.close()
                except OSError:
                    pass
        for host in self.hosts:
            self._end(host)
        if self._record is not None:
            self._record.remove()

    def _end(self, host: Host) -> None:
        proc = host.proc
        if proc is None:
            return
        if proc.stdin is not None:
            try:
                proc.stdin.close()  # the bootstrap there stops its worker and ends
            except OSError:
                pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _ssh(self, host: Host, port: int) -> list[str]:
        dest, ssh_port = split_host(host.name)
        argv = ["ssh"]
        if self.ssh_config:
            argv += ["-F", self.ssh_config]
        argv += ["-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                 "-o", "LogLevel=INFO"]  # (ssh says the port it allocated at this level)
        if self.mode == "session":
            argv += ["-R", f"0:127.0.0.1:{port}"]
        if ssh_port:
            argv += ["-p", ssh_port]
        return [*argv, *self.options, "--", dest,
                remote_command(f"{sys.version_info[0]}.{sys.version_info[1]}")]

    def _launch(self, host: Host, target: Target, own: list[_wheels.Wheel],
                extra: list[_wheels.Wheel]) -> None:
        try:
            self._session(host, target, own, extra)
        except BrokenPipeError:  # the host ended the session: it says why, or ssh does
            proc = host.proc
            if proc is not None and proc.stdout is not None and not host.problem:
                self._answer(host, proc.stdout)
            host.problem = host.problem or self._why(host, "the session closed")
        except (OSError, ValueError, KeyError) as exc:
            host.problem = host.problem or self._why(host, f"{type(exc).__name__}: {exc}")
        if host.problem:
            self._end(host)

    def _session(self, host: Host, target: Target, own: list[_wheels.Wheel],
                 extra: list[_wheels.Wheel]) -> None:
        proc = host.proc = subprocess.Popen(
            self._ssh(host, target.port), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True)  # (a Ctrl-C is the Main's to handle)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        host.reader = threading.Thread(target=self._read_stderr, args=(host, proc.stderr),
                                       daemon=True, name=f"distrib-ssh-{host.name}-log")
        host.reader.start()
        source = (Path(__file__).with_name("_remote.py")).read_bytes()
        stdin = proc.stdin
        stdin.write(b"%d\n" % len(source) + source)
        stdin.flush()
        hello = self._answer(host, proc.stdout)
        if hello is None:
            return
        here = f"{sys.platform} {platform.machine()}"
        if hello["hello"]["platform"] != here:  # (the wheels sent are this machine's)
            host.problem = (f"it is {hello['hello']['platform']}, this Main {here}: launched "
                            "hosts need the Main's platform")
            return
        have = set(hello["hello"]["have"])
        wheels = own + extra
        stdin.write(json.dumps({
            "wheels": [[w.digest, w.path.name, w.size] for w in wheels],
            "distrib_wheels": len(own), "venv": _venv_id(own),
            "main_key": target.main_key, "name": split_host(host.name)[0],
            "threads": self.threads, "args": self.worker_args, "port": target.port,
            "persist": self.mode == "persist", "down": self.mode == "down"}).encode() + b"\n")
        for w in wheels:
            if w.digest not in have:
                stdin.write(w.path.read_bytes())
        stdin.flush()
        answer = self._answer(host, proc.stdout)
        if answer is None:
            return
        if self.mode == "down":
            host.ready = answer["stopped"]
            return
        host.key = answer["key"]
        self._authorize(target.authorized, host)
        if self.mode == "persist":
            host.port = target.port
        elif not host.allocated.wait(self.timeout):
            host.problem = "ssh allocated no port for the reverse tunnel (-R)"
            return
        stdin.write(json.dumps({"port": host.port}).encode() + b"\n")
        stdin.flush()
        answer = self._answer(host, proc.stdout)
        if answer is not None:
            host.ready = answer["ready"]
            log.info("%s: %s", host.name, host.ready)

    def _answer(self, host: Host, stdout: IO[bytes]) -> dict[str, Any] | None:
        line = stdout.readline()
        if not line:
            assert host.proc is not None
            status = host.proc.wait()
            if status == NO_PYTHON:
                version = f"{sys.version_info[0]}.{sys.version_info[1]}"
                host.problem = (f"no Python {version} there (this Main runs {version}; looked "
                                f"for python{version} and python3 on the PATH and in "
                                f"~/.pyenv): install Python {version} on it")
            else:
                host.problem = self._why(host, f"ssh exited with status {status}")
            return None
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            host.problem = str(message["error"])
            return None
        return message

    def _why(self, host: Host, fallback: str) -> str:
        if host.reader is not None and host.proc is not None and host.proc.poll() is not None:
            host.reader.join(1.0)  # (ssh's last words may still be on their way)
        lines = [s for s in host.stderr if not s.startswith(("Warning: Permanently added",
                                                             "Allocated port"))]
        return lines[-1] if lines else fallback

    def _read_stderr(self, host: Host, stderr: IO[bytes]) -> None:
        for raw in stderr:
            line = raw.decode(errors="replace").rstrip()
            found = _ALLOCATED.search(line)
            if found:
                host.port = int(found.group(1))
                host.allocated.set()
                continue
            host.stderr = [*host.stderr[-20:], line]
            if host.ready:  # the worker's own log, once it runs
                log.info("%s: %s", host.name, line)

    def _authorize(self, authorized: Path, host: Host) -> None:
        with self._lock:
            if host.key in authorized.read_text().split():  # (a standing file: once is enough)
                return
            with open(authorized, "a") as out:
                out.write(f"{host.key} {split_host(host.name)[0]}\n")
            # A new, distinct time: the Main rereads the file when its time changes.
            stamp = max(time.time_ns(), self._last_mtime + 1_000_000)
            self._last_mtime = stamp
            os.utime(authorized, ns=(stamp, stamp))


def _venv_id(own: list[_wheels.Wheel]) -> str:
    import hashlib

    digest = hashlib.sha256("".join(w.digest for w in own).encode()).hexdigest()[:16]
    return f"py{sys.version_info[0]}.{sys.version_info[1]}-{digest}"

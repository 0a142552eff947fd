"""The interpreter the daemon keeps started ahead for its next template (a ``Zygote``): when
to start one, and giving up on them when they keep dying.

Light to import: the command line starts the first one before it imports the daemon (see
``_cli.worker``), so that it imports beside the daemon, not after it."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from distrib.wire._pipe import NICE_VAR, encode
from distrib.wire._pipe_messages import Become

log = logging.getLogger("distrib.worker")

DEATHS = 5  # interpreters started ahead that die unused before no more are started
# Seconds after a template was last importing before the next interpreter is started ahead:
# the Main it was for is starting its tasks then, and an interpreter starting beside them
# would take a core from them (and from a short-lived worker, for a template never used).
QUIET = 3.0


class Ahead:
    """The interpreter started ahead, if any, and when one may be started next."""

    def __init__(self) -> None:
        self.enabled = True  # (not where templates are sandboxed: they start their own)
        self.zygote: Zygote | None = None
        self._deaths = 0  # ones that died before a template took them
        self._importing_at = -QUIET  # when a template was last importing

    def adopt(self, zygote: Zygote) -> None:
        """Keep ``zygote``, started before the daemon was, as the one started ahead."""
        if self.zygote is None and self.enabled:
            self.zygote = zygote
        else:
            zygote.kill()

    def take(self, now: float) -> Zygote | None:
        """The interpreter for a template that starts importing now (None: it starts its own)."""
        zygote, self.zygote = self.zygote, None
        self._importing_at = now
        return zygote

    def keep(self, now: float, importing: bool, nice: int) -> None:
        """Start one if none is kept and no template (``importing``: one is now) has been
        importing for a while."""
        zygote = self.zygote
        if zygote is not None and zygote.proc.poll() is not None:
            zygote.kill()  # (it died: reaped, and replaced, unless they keep dying)
            self.zygote = None
            self._deaths += 1
            if self._deaths == DEATHS:
                log.warning("the interpreters started ahead for templates keep dying; "
                            "templates start their own (about 0.1 s more at a first call)")
        if importing:
            self._importing_at = now
        elif (self.zygote is None and self.enabled and self._deaths < DEATHS
              and now - self._importing_at >= QUIET):
            try:
                self.zygote = Zygote(nice)
            except OSError as exc:
                log.debug("cannot start an interpreter ahead: %s", exc)

    def pids(self) -> set[int]:
        return {self.zygote.proc.pid} if self.zygote is not None else set()

    def drop(self) -> None:
        """End the one kept (a new one starts at the next ``keep``)."""
        if self.zygote is not None:
            self.zygote.kill()
            self.zygote = None


def _python(python: Path, argv: list[str], theirs: socket.socket, environ: dict[str, str],
            cwd: Path) -> subprocess.Popen[bytes]:
    """``python -m distrib.executor._tasks ARGV``, given the socket ``theirs``."""
    return subprocess.Popen(
        [str(python), "-P", "-m", "distrib.executor._tasks", *argv],
        pass_fds=(theirs.fileno(),),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # a task's prints are forwarded at the Python level
        env=environ,
        cwd=cwd,
    )


class Zygote:
    """An interpreter of the daemon's own Python, started ahead, that imported the executor's
    code and waits to become a template: a Main's first call does not wait for an
    interpreter to start (about 0.1 s here). It leaves when the daemon closes its socket."""

    def __init__(self, nice: int) -> None:
        ours, theirs = socket.socketpair()
        try:  # (at the owner's niceness: its start is work done for Mains)
            self.proc = _python(Path(sys.executable), ["zygote", str(theirs.fileno())], theirs,
                                {**os.environ, NICE_VAR: str(nice)}, Path("/"))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._control = ours

    def become(self, mode: list[str], variables: dict[str, str], cwd: Path,
               arguments: list[str], theirs: socket.socket) -> subprocess.Popen[bytes] | None:
        """Make it the process ``python -m distrib.executor._tasks MODE FD ARGUMENTS`` (with
        ``variables``, in ``cwd``) would start, given the socket ``theirs``; None if it cannot
        be (it is gone)."""
        try:
            if self.proc.poll() is not None:
                return None
            message, _ = encode(Become(mode, variables, str(cwd), arguments))
            socket.send_fds(self._control, [message], [theirs.fileno()])
            return self.proc
        except OSError:
            return None
        finally:
            self._control.close()

    def kill(self) -> None:
        self._control.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

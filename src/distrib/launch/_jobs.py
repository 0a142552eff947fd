"""Slurm's commands as a launcher uses them: ``sbatch`` a job, read its state with
``squeue``, ``scancel`` it; and the watchdog process that cancels a Main's jobs when it is gone.

Every failure of a command becomes one line naming the job (``LaunchError``, or a log line
where nothing waits for the answer).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO

from distrib._errors import LaunchError

log = logging.getLogger("distrib")

COMMAND_TIMEOUT = 60.0  # seconds a Slurm command may take (a busy controller is slow)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise LaunchError(f"{argv[0]} was not found: run this on a Slurm cluster's login node "
                          "(or where Slurm's commands are on the PATH)")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{argv[0]} did not answer within {COMMAND_TIMEOUT:.0f} s") from None


def _said(result: subprocess.CompletedProcess[str]) -> str:
    """What a failed command said, on one line."""
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    text = "; ".join(" ".join(line.split()) for line in lines if line.strip())
    return text or f"exit status {result.returncode}"


def submit(script: Path, options: list[str], name: str) -> str:
    """Submit ``script`` as job ``name``; its job id (``LaunchError`` naming it if refused)."""
    result = _run(["sbatch", "--parsable", f"--job-name={name}", *options, str(script)])
    job_id = result.stdout.strip().split(";")[0]
    if result.returncode != 0 or not job_id.isdigit():
        raise LaunchError(f"Slurm job {name}: sbatch refused it: {_said(result)}")
    return job_id


def states(name: str) -> dict[str, tuple[str, str]] | None:
    """The jobs named ``name`` that Slurm still lists: id -> (state, reason); None if squeue
    failed (said in the log)."""
    try:
        result = _run(["squeue", "--noheader", f"--name={name}", f"--user={os.getuid()}",
                       "--format=%i|%T|%r"])
    except LaunchError as exc:
        log.warning("Slurm jobs %s: %s", name, exc)
        return None
    if result.returncode != 0:
        log.warning("Slurm jobs %s: squeue failed: %s", name, _said(result))
        return None
    out: dict[str, tuple[str, str]] = {}
    for line in result.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if job_id:
            out[job_id] = (state, reason)
    return out


def cancel(job_ids: list[str], name: str, every: bool = False) -> bool:
    """Cancel these jobs (``every``: and any other of this user's jobs named ``name``);
    whether scancel did (a failure is logged: the watchdog cancels what is left at the end)."""
    if not job_ids and not every:
        return True
    named = [f"--name={name}", f"--user={os.getuid()}"] if every else []
    try:
        result = _run(["scancel", *named, *job_ids])
    except LaunchError as exc:
        log.warning("Slurm job(s) %s of %s: %s", ",".join(job_ids), name, exc)
        return False
    if result.returncode != 0:
        log.warning("Slurm job(s) %s of %s: scancel failed: %s", ",".join(job_ids), name,
                    _said(result))
        return False
    return True


class Watchdog:
    """A process of its own session that holds this Main's job ids, and cancels them when
    its input closes: at the Main's exit, or its death (kill -9 too: the kernel closes the
    pipe), then removes the launcher's folder."""

    def __init__(self, folder: Path, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distrib.launch._watchdog", str(folder), name],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            start_new_session=True)  # (a Ctrl-C to the Main's terminal must not stop it first)
        assert self.proc.stdin is not None
        self._pipe: IO[str] = self.proc.stdin

    def _say(self, line: str) -> None:
        try:
            self._pipe.write(line + "\n")
            self._pipe.flush()
        except (OSError, ValueError):  # (gone: its jobs are cancelled already)
            pass

    def submitting(self) -> None:
        self._say("*")

    def hold(self, job_id: str) -> None:
        self._say(f"+{job_id}")

    def forget(self, job_id: str) -> None:
        self._say(f"-{job_id}")

    def close(self, wait: float = 30.0) -> None:
        """Have it cancel what it holds, and wait for that."""
        try:
            self._pipe.close()
        except OSError:
            pass
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            log.warning("the Slurm watchdog (pid %d) did not finish within %.0f s",
                        self.proc.pid, wait)

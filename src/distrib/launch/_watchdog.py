"""The watchdog of a Main's Slurm jobs, a process of its own: ``python -m
distrib.launch._watchdog FOLDER NAME``.

It reads ``*`` (a job about to be submitted), ``+ID`` (a job submitted) and ``-ID`` (a job
already ended) lines on its input; when the input closes (the Main ended, or was killed), it
cancels the jobs it holds, and any other job of its name (one the Main submitted but was
killed before it said so), and removes the launcher's FOLDER (the jobs' keys and scripts); a
failed ``scancel`` is tried again a few times. It ignores the signals a terminal sends, so a Ctrl-C that stops the Main does not stop
it before it has done so.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from pathlib import Path

from distrib.launch._jobs import cancel

CANCEL_TRIES = 5  # scancel tries before giving up (the jobs' time limits end them then)


def main(argv: list[str]) -> int:
    folder, name = Path(argv[0]), argv[1]
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    held: list[str] = []
    submitted = False  # (no sbatch ever ran: there is nothing of its name to cancel)
    for line in sys.stdin:
        line = line.strip()
        submitted = submitted or line == "*"
        if line.startswith("+"):
            held.append(line[1:])
        elif line.startswith("-") and line[1:] in held:
            held.remove(line[1:])
    # (no sbatch ran, or none could: no Slurm here; else a controller may be busy a while)
    tries = CANCEL_TRIES if submitted and shutil.which("scancel") else 0
    for attempt in range(tries):
        if cancel(held, name) and cancel([], name, every=True):
            break
        time.sleep(2.0 * (attempt + 1))
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``distrib up slurm``: a Slurm job of workers that stays while the command runs, for the
Mains started meanwhile on this machine.

It makes a Main key and the launcher's folder (as ``Slurm`` does for a script), submits the
job, whose workers dial ``--listen``'s port here and dial again after each Main, and writes
the settings such a Main needs (``DISTRIB_LISTEN``, ``DISTRIB_KEY``,
``DISTRIB_AUTHORIZED_WORKERS``) to ``<cache>/slurm/up.env`` for the shell to read. Ctrl-C (or
SIGTERM, or its death) cancels the job; so does the job's end, which ends the command too.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from distrib import _config
from distrib._values import listen as check_listen
from distrib.launch._slurm import Slurm
from distrib.wire import _keys

log = logging.getLogger("distrib")


def env_file(cache_dir: Path) -> Path:
    """Where the last ``distrib up slurm`` writes a Main's settings."""
    return cache_dir / "slurm" / "up.env"


def up(slurm: Slurm, listen: str, cache_dir: Path, say: Callable[[str], None]) -> int:
    """Submit the job, hold it until a signal or its end; the exit status."""
    listen = check_listen("--listen", listen)
    settings = slurm.prepare(_config.Settings(cache_dir=cache_dir, listen=listen,
                                              key=_keys.generate()))
    assert slurm.folder is not None and settings.key is not None
    key_file = slurm.folder / "main.key"
    _keys.write(key_file, settings.key, "distrib up slurm")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    env = env_file(cache_dir)
    try:
        slurm.start(f"tcp://{listen}", lambda: (0, 0, 0))
        fd = os.open(env, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"export DISTRIB_LISTEN={listen} DISTRIB_KEY={key_file} "
                    f"DISTRIB_AUTHORIZED_WORKERS={settings.authorized_workers}\n")
        say(f"Slurm job {', '.join(slurm.job_ids)} ({slurm.name}) submitted: its workers dial "
            f"{slurm.address}. Mains started after `. {env}` use them; Ctrl-C here cancels "
            "the job.")
        while not stop.wait(1.0):
            if not slurm.job_ids:
                say(f"the Slurm job of {slurm.name} ended")
                return 1
        return 0
    finally:
        slurm.close()
        if env.is_file() and str(slurm.folder) in env.read_text():
            env.unlink()

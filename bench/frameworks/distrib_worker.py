"""distrib on a ``distrib worker`` daemon started for the measurement (``slots`` threads, on
loopback), without a sandbox: the baseline ``distrib-sandbox`` is compared with (the embedded
local cluster runs without one too, but over an ipc socket)."""

from __future__ import annotations

import os
import subprocess
import sys

import distrib
from bench.frameworks.distrib_ import REPO_ROOT
from bench.frameworks.distrib_ import Framework as Embedded


class Framework(Embedded):
    """distrib with one worker daemon of its own."""

    extra: tuple[str, ...] = ("--no-sandbox",)

    def start(self, slots: int) -> None:
        cache = os.path.join(os.environ.get("DISTRIB_CACHE_DIR", "."), "worker")
        self._worker = subprocess.Popen(
            [sys.executable, "-P", "-m", "distrib", "worker", "--listen", "127.0.0.1:0",
             "--threads", str(slots), "--cache-dir", cache, "--nice", "0",
             "--exit-with-parent", str(os.getpid()), *self.extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        assert self._worker.stdout is not None
        line = self._worker.stdout.readline()  # "... ready on tcp://127.0.0.1:PORT with ..."
        address = line.split(" ready on ")[1].split()[0]
        distrib.init([address], workspace=REPO_ROOT)

    def stop(self) -> None:
        distrib.shutdown()
        self._worker.terminate()
        self._worker.wait(30)

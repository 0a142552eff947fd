"""Task functions of a module that imports numpy, as most real workspaces do (W8)."""

from __future__ import annotations

import time

import numpy


def nap(seconds: float) -> int:
    """Hold a slot; the module's import of numpy is what a fresh worker process pays for."""
    time.sleep(seconds)
    return int(numpy.int64(1))

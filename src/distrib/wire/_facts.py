"""Facts a peer reports in the handshake: platform tag and Python version."""

from __future__ import annotations

import platform
import sys


def platform_tag() -> str:
    """``linux-x86_64``, ``darwin-arm64``, ``windows-amd64``: OS and machine, lower case."""
    system = {"win32": "windows", "darwin": "darwin"}.get(sys.platform, sys.platform)
    if system.startswith("linux"):
        system = "linux"
    return f"{system}-{platform.machine().lower()}"


def python_version() -> str:
    """The running interpreter's ``major.minor``; pickled code needs both sides to match."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"

"""A process's private temporary folders (a local cluster's socket, a launch's keys) are
named after it, and those of this user's processes that are gone are removed when the next
one is made (a Main killed with -9 left its launch's key there)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from distrib._scratch import private_prefix


def test_the_folders_of_processes_that_are_gone_go_and_the_others_stay() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = Path(tempfile.mkdtemp(prefix=f"distrib-cluster-{dead.pid}-"))
    (gone / "main.key").write_text("secret")
    live = Path(tempfile.mkdtemp(prefix=f"distrib-cluster-{os.getppid()}-"))
    other_kind = Path(tempfile.mkdtemp(prefix=f"distrib-local-{dead.pid}-"))
    try:
        prefix = private_prefix("cluster")
        assert prefix == f"distrib-cluster-{os.getpid()}-"
        assert not gone.exists()
        assert live.is_dir() and other_kind.is_dir()  # (its process lives; another kind)
    finally:
        for folder in (gone, live, other_kind):
            subprocess.run(["rm", "-rf", str(folder)], check=True)

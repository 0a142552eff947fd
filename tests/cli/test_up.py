"""`distrib up slurm` and the flags of launched workers, where no Slurm is at hand."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.helpers import PYTHON


def test_up_slurm_without_slurm_says_so_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    out = subprocess.run([PYTHON, "-m", "distrib", "up", "slurm", "--cache-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": str(tmp_path / "empty")})
    assert out.returncode == 1
    assert out.stderr == ("Error: sbatch was not found: run this on a Slurm cluster's login "
                          "node (or where Slurm's commands are on the PATH)\n")
    assert not list((tmp_path / "slurm").iterdir())


def test_exit_without_main_needs_a_main_to_dial(tmp_path: Path) -> None:
    out = subprocess.run([PYTHON, "-m", "distrib", "worker", "--exit-without-main", "5",
                          "--cache-dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "--exit-without-main needs --connect" in out.stderr

"""Scratch folders of a worker's tasks: removing them, even an overlay's work folder, and the
task folders that daemons killed before their end left behind."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from distrib._process import exists


def remove_tree(path: Path) -> None:
    """Remove a scratch tree, including an overlay's work folder (which has mode 000)."""
    for folder, dirs, _ in os.walk(path):  # top down: each folder is opened before its walk
        for name in dirs:
            os.chmod(os.path.join(folder, name), stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)


def remove_dead_runs(runs: Path) -> None:
    """Remove the task folders of daemons that are gone (killed before they could)."""
    for folder in runs.glob("*-*") if runs.is_dir() else []:
        pid = folder.name.split("-", 1)[0]
        if pid.isdigit() and not exists(int(pid)):
            remove_tree(folder)

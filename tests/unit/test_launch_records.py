"""What Mains launched, as `distrib status` reads it: written while the launch runs, removed
when it ends, and a file whose Main is gone is dropped by the next reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from distrib.launch import _records


def test_a_launch_is_listed_while_it_runs_and_not_after(tmp_path: Path) -> None:
    record = _records.Record(tmp_path, "slurm")
    record.write([{"where": "job 17 (distrib-abc)", "state": "pending"}])
    record.write([{"where": "job 17 (distrib-abc)", "state": "running"}])
    assert _records.lines(tmp_path) == [{"kind": "slurm", "where": "job 17 (distrib-abc)",
                                         "state": "running", "main_pid": str(os.getpid())}]
    assert _records.table(_records.lines(tmp_path)).row_count == 1
    record.remove()
    assert _records.lines(tmp_path) == []


def test_the_launch_of_a_main_that_is_gone_is_dropped(tmp_path: Path) -> None:
    # A Main killed before it could remove its file: another process wrote it and ended.
    code = ("import sys\nfrom pathlib import Path\nfrom distrib.launch import _records\n"
            "_records.Record(Path(sys.argv[1]), 'ssh').write([{'where': 'lab1', "
            "'state': 'ready'}])\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    (stale,) = _records.folder(tmp_path).glob("*.json")
    assert json.loads(stale.read_text())["workers"] == [{"where": "lab1", "state": "ready"}]
    assert _records.lines(tmp_path) == [] and not stale.exists()
    (_records.folder(tmp_path) / "broken.json").write_text("{not json")
    assert _records.lines(tmp_path) == []

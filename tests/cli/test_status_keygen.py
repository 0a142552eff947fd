"""`distrib status` and `distrib keygen` as a user runs them."""

from __future__ import annotations

import json
import os
import socket
import sys
import stat
import subprocess
from pathlib import Path

from distrib.wire import _keys
from tests.helpers import PYTHON, Workspace, wait_for


def distrib(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "distrib", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "250", **(env or {})},
                          cwd=cwd)


def test_keygen_writes_an_owner_only_secret_and_a_public_file(tmp_path: Path) -> None:
    out = distrib("keygen", str(tmp_path / "me.key"), "--comment", "me@laptop")
    assert out.returncode == 0, out.stderr
    secret = tmp_path / "me.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    public = (tmp_path / "me.key.pub").read_text()
    assert public.endswith(" me@laptop\n")
    assert _keys.load_secret(secret).public == public.split()[0]
    again = distrib("keygen", str(secret))
    assert again.returncode != 0 and "exists" in again.stderr


def test_status_shows_load_mains_and_unreachable_workers(tmp_path: Path, start_worker) -> None:
    main = _keys.generate()
    _keys.write(tmp_path / "main.key", main)
    (tmp_path / "auth").write_text(f"{main.public}\n")
    _keys.write(tmp_path / "w.key", _keys.generate())
    worker = start_worker(threads=3, name="box", extra=(
        "--key", str(tmp_path / "w.key"), "--authorized-keys", str(tmp_path / "auth")))
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    env = {"DISTRIB_KEY": str(tmp_path / "main.key"),
           "DISTRIB_WORKERS": f"{worker.address} {worker.public_key}, {dead}"}
    table = distrib("status", "--timeout", "3", env=env, cwd=tmp_path)
    assert table.returncode == 1  # one worker is unreachable
    row = next(line for line in table.stdout.splitlines() if "box" in line)
    assert "0/3" in row and "reachable" in row
    assert "%d.%d" % sys.version_info[:2] in row and "0 built, 0 reused" in row
    assert any(dead in line and "unreachable" in line for line in table.stdout.splitlines())
    rows = json.loads(distrib("status", "--json", "--timeout", "3", env=env,
                              cwd=tmp_path).stdout)
    assert rows[0]["name"] == "box" and rows[0]["slots"] == 3 and rows[0]["problem"] == ""
    assert rows[1]["problem"].startswith("no answer")
    # Disk use, measured off the daemon's loop as it starts, is there by now.
    disk = wait_for(lambda: (s := json.loads(distrib(
        "status", "--json", "--timeout", "3", env=env, cwd=tmp_path).stdout)[0])[
            "disk_age_s"] is not None and s, what="the worker's first measure of its disk use")
    assert disk["workspaces_cached"] == 0 and disk["envs_cached"] == 0
    assert isinstance(disk["workspaces_bytes"], int) and isinstance(disk["envs_bytes"], int)


def test_the_first_status_after_a_run_counts_the_workspace_it_left(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=1)
    env = {"DISTRIB_WORKERS": worker.address}
    before = distrib("status", env=env, cwd=workspace.root)  # (a query before the run)
    assert before.returncode == 0 and "cached: 0 workspaces" in before.stdout, before.stdout
    workspace.write("main.py", """
        from distrib import distributed

        @distributed
        def double(x):
            return 2 * x

        if __name__ == "__main__":
            print("OK", double(21).unwrap(timeout=60))
        """)
    out = workspace.run("main.py", env=env)
    assert out.stdout.strip() == "OK 42", out.stderr
    after = distrib("status", env=env, cwd=workspace.root)
    assert after.returncode == 0 and "cached: 1 workspaces" in after.stdout, after.stdout


def test_status_without_workers_says_how_to_configure(tmp_path: Path) -> None:
    out = distrib("status", env={"DISTRIB_WORKERS": ""}, cwd=tmp_path)
    assert out.returncode == 1 and "DISTRIB_WORKERS" in out.stderr

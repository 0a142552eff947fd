"""The owner's disk limits: a task that writes more than ``--max-task-disk`` (or, with the
rest of the cache, ``--max-cache``) fails naming the limit, what it wrote is dropped, and the
worker serves on."""

from __future__ import annotations

import os
from pathlib import Path

from distrib.wire import _keys
from tests.helpers import Workspace, wait_for

TASKS = """
    import os
    from distrib import distributed

    @distributed
    def fill(name, most_mb):
        # 1 MB at a time until stopped, or ``most_mb`` written
        chunk = os.urandom(1 << 20)
        with open(name, "wb") as f:
            for i in range(most_mb):
                f.write(chunk)
                f.flush()
        return os.path.getsize(name)
    """

MAIN = """
    import distrib, tasks

    if __name__ == "__main__":
        try:
            print("BIG", tasks.fill("big.bin", 5000).unwrap(timeout=120))
        except distrib.TaskDiskExceeded as exc:
            print("EXCEEDED", exc)
        print("SMALL", tasks.fill("small.bin", 10).unwrap(timeout=60))
        print("AGAIN", tasks.fill("small.bin", 10).unwrap(timeout=60))
    """


def _layers(cache: Path) -> int:
    """Bytes in the worker's runs folders (its executors' layers)."""
    total = 0
    for folder, _, files in os.walk(cache / "worker" / "runs"):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # (removed meanwhile)
                pass
    return total


def test_a_task_writing_past_the_limit_fails_naming_it_and_the_worker_serves_on(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    main = _keys.generate()
    _keys.write(tmp_path / "main.key", main)
    _keys.write(tmp_path / "worker.key", _keys.generate())
    (tmp_path / "authorized").write_text(f"{main.public} a Main\n")
    worker = start_worker(threads=1, extra=(
        "--max-task-disk", "50M", "--key", str(tmp_path / "worker.key"),
        "--authorized-keys", str(tmp_path / "authorized")))
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", MAIN)
    out = workspace.run("main.py", timeout=180, env={
        "DISTRIB_KEY": str(tmp_path / "main.key"),
        "DISTRIB_WORKERS": f"{worker.address} {worker.public_key}"})
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stderr[-3000:]
    assert lines[0].startswith("EXCEEDED task fill#"), lines
    assert "more than worker w0's disk limit for a task (50M, its --max-task-disk)" in lines[0]
    assert "what it wrote dropped" in lines[0]
    amount, unit = lines[0].split("it wrote ")[1].split(", more than")[0].rsplit(" ", 1)
    written = float(amount.replace(",", "")) * {"kB": 1e-3, "MB": 1, "GB": 1e3}[unit]
    assert 50 < written < 2000, lines[0]  # stopped long before its 5 GB (in MB; a busy
    # machine's watcher stopped it at 1.1 GB once)
    assert lines[1:] == [f"SMALL {10 << 20}", f"AGAIN {10 << 20}"]  # under it: fine
    assert "stopping executor" in worker.log()
    wait_for(lambda: _layers(worker.cache_dir) < 30 << 20, 30,
             "the stopped task's writes were not dropped")


def test_the_limit_from_the_policy_file_is_named_as_its_key(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    policy = tmp_path / "worker.toml"
    policy.write_text('max_task_disk = "20M"\n')
    worker = start_worker(threads=1, extra=("--policy", str(policy)))
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", """
        import distrib, tasks

        if __name__ == "__main__":
            try:
                tasks.fill("big.bin", 5000).unwrap(timeout=120)
            except distrib.TaskDiskExceeded as exc:
                print("EXCEEDED", exc)
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, timeout=180)
    assert f"(20M, its max_task_disk in its policy file {policy})" in out.stdout, \
        out.stdout + out.stderr[-3000:]


def test_what_tasks_write_counts_against_the_cache_limit(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=1, extra=("--max-cache", "60M"))
    workspace.write("tasks.py", TASKS)
    workspace.write("main.py", MAIN)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, timeout=180)
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stderr[-3000:]
    assert lines[0].startswith("EXCEEDED task fill#"), lines
    assert "its cache's limit (60M, its --max-cache) leaves them" in lines[0]
    assert lines[1:] == [f"SMALL {10 << 20}", f"AGAIN {10 << 20}"]

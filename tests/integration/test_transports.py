"""The core runtime over each transport a worker offers: ipc, tcp, and tcp with CURVE keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from distrib.wire import _keys
from tests.helpers import Workspace, with_tasks

SCRIPT = """
    import sys
    import distrib
    import tasks

    if __name__ == "__main__":
        print("OK", distrib.gather(tasks.ok.map(range(50)), timeout=120) == list(range(1, 51)))
        try:
            tasks.raiser("over the wire").unwrap(timeout=120)
        except ValueError as exc:
            print("RAISED", exc, "raise ValueError(message)" in exc.__cause__.text)
        big = bytearray(b"z" * 3_000_000)  # out-of-band frames both ways
        print("BIG", tasks.echo(big).unwrap(timeout=120) == big)
        print("TALK", tasks.talk(7).unwrap(timeout=120))
        print("CRASH", type(tasks.crash().error(timeout=120)).__name__)
    """


@pytest.mark.parametrize("transport", ["ipc", "tcp", "curve"])
def test_core_calls_over_each_transport(transport: str, workspace: Workspace, start_worker,
                                        tmp_path: Path) -> None:
    env = {}
    big_frames = {"DISTRIB_MAX_MESSAGE_MB": "512"}
    if transport == "ipc":
        worker = start_worker(listen=f"ipc://{tmp_path}/worker.sock", env=big_frames)
        env["DISTRIB_WORKERS"] = worker.address
    elif transport == "tcp":
        worker = start_worker(env=big_frames)
        env["DISTRIB_WORKERS"] = worker.address
    else:
        main, own = _keys.generate(), _keys.generate()
        _keys.write(tmp_path / "main.key", main)
        _keys.write(tmp_path / "worker.key", own)
        (tmp_path / "mains").write_text(f"{main.public}\n")
        worker = start_worker(env=big_frames, extra=(
            "--key", str(tmp_path / "worker.key"), "--authorized-keys", str(tmp_path / "mains")))
        worker.status_key = main
        env["DISTRIB_KEY"] = str(tmp_path / "main.key")
        env["DISTRIB_WORKERS"] = f"{worker.address} {worker.public_key}"
    with_tasks(workspace).write("main.py", SCRIPT)
    out = workspace.run("main.py", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [
        "OK True", "RAISED over the wire True", "BIG True", f"[{worker.name}] line 7 to stdout",
        "TALK 7", "CRASH WorkerCrashed"]
    assert f"[{worker.name}] line 7 to stderr" in out.stderr
    assert worker.status()["tasks_done"] >= 53

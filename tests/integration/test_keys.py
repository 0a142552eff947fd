"""Keys on real daemons: authorized Mains work, others get a clear AuthError."""

from __future__ import annotations

import shutil
from pathlib import Path

from distrib.wire import _keys
from tests.helpers import Workspace, wait_for
from tests.helpers import TASKS

SCRIPT = """
    import sys
    import distrib
    import tasks

    if __name__ == "__main__":
        try:
            print("RESULT", distrib.gather(tasks.ok.map(range(8)), timeout=120))
        except distrib.AuthError as exc:
            print("AUTHERROR", exc)
    """


def keygen(path: Path) -> str:
    """Write a key pair as `distrib keygen` does (the secret file and its ``.pub``), here in
    the test's process: the command itself, a Python start each time, is tested in
    tests/cli/test_status_keygen.py. The public key it wrote."""
    _keys.write(path, _keys.generate(), "a test")
    return path.with_name(path.name + ".pub").read_text().split()[0]


def keyed_worker(start_worker, tmp_path: Path, name: str, authorized: list[str],
                 threads: int = 2, extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()):
    """A worker with keys serving the Mains of ``authorized`` (each a key, and settings such
    as a quota after it), and the test itself for status queries; and its authorized-keys
    file."""
    keygen(tmp_path / f"{name}.key")
    admin = _keys.generate()  # the test's own key, for status queries
    auth = tmp_path / f"{name}.authorized"
    auth.write_text("# Mains allowed here\n" + "".join(f"{k} a Main\n" for k in authorized)
                    + f"{admin.public} the test\n")
    worker = start_worker(threads=threads, name=name, env=env, prefix=prefix,
                          extra=("--key", str(tmp_path / f"{name}.key"),
                                 "--authorized-keys", str(auth), *extra))
    worker.status_key = admin
    return worker, auth


def run(ws: Workspace, key: Path, *workers: tuple[str, str]) -> str:
    shutil.copy(TASKS, ws.root / "tasks.py")
    ws.write("main.py", SCRIPT)
    env = {"DISTRIB_KEY": str(key),
           "DISTRIB_WORKERS": ",".join(f"{a} {k}" for a, k in workers)}
    out = ws.run("main.py", env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_an_authorized_main_runs_tasks_over_curve(workspace: Workspace, start_worker,
                                                  tmp_path: Path) -> None:
    good = keygen(tmp_path / "main.key")
    worker, _ = keyed_worker(start_worker, tmp_path, "secure", [good])
    out = run(workspace, tmp_path / "main.key", (worker.address, worker.public_key))
    assert "RESULT [1, 2, 3, 4, 5, 6, 7, 8]" in out


def test_an_unauthorized_main_gets_auth_error_and_the_worker_logs_the_key(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    good = keygen(tmp_path / "good.key")
    bad = keygen(tmp_path / "bad.key")
    worker, auth = keyed_worker(start_worker, tmp_path, "guarded", [good])
    out = run(workspace, tmp_path / "bad.key", (worker.address, worker.public_key))
    assert "AUTHERROR" in out and worker.address in out
    assert f"refused this Main's key {bad}" in out
    wait_for(lambda: f"key {bad} is not in the authorized keys" in worker.log(),
             what="the refused key in the worker's log")
    assert worker.status()["tasks_done"] == 0
    # Other Mains keep working.
    assert "RESULT [1, 2, 3, 4, 5, 6, 7, 8]" in run(workspace, tmp_path / "good.key",
                                                    (worker.address, worker.public_key))
    # The owner authorizes the key: the worker rereads its file; the Main is served.
    auth.write_text(auth.read_text() + f"{bad} now allowed\n")
    wait_for(lambda: "RESULT" in run(workspace, tmp_path / "bad.key",
                                     (worker.address, worker.public_key)),
             what="the newly authorized Main to be served")


def test_a_worker_whose_key_does_not_match_is_refused(workspace: Workspace, start_worker,
                                                      tmp_path: Path) -> None:
    main = keygen(tmp_path / "main.key")
    worker, _ = keyed_worker(start_worker, tmp_path, "impostor", [main])
    wrong = keygen(tmp_path / "other.key")
    out = run(workspace, tmp_path / "main.key", (worker.address, wrong))
    assert "AUTHERROR" in out
    assert "did not prove the public key configured for it" in out and wrong in out


def test_a_refused_worker_is_skipped_when_another_serves(workspace: Workspace, start_worker,
                                                         tmp_path: Path) -> None:
    main = keygen(tmp_path / "main.key")
    refusing, _ = keyed_worker(start_worker, tmp_path, "refusing", [])
    serving, _ = keyed_worker(start_worker, tmp_path, "serving", [main])
    out = run(workspace, tmp_path / "main.key", (refusing.address, refusing.public_key),
              (serving.address, serving.public_key))
    assert "RESULT [1, 2, 3, 4, 5, 6, 7, 8]" in out
    assert "refused this Main's key" in out  # the warning
    assert serving.status()["tasks_done"] == 8

"""Workers that dial a Main that listens (``listen``, ``distrib worker --connect``): real
daemons, real keys, real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from distrib.wire import _keys
from distrib.wire._keys import KeyPair
from tests.helpers import PYTHON, Workspace, ended, finish, free_port, wait_for

SCRIPT = """
    import sys
    import distrib
    from distrib import distributed

    @distributed
    def add(a, b):
        return a + b

    @distributed
    def echo(data):
        return data

    @distributed
    def tree(depth):  # calls from inside a task
        if depth == 0:
            return 1
        return sum(r.unwrap() for r in [tree(depth - 1), tree(depth - 1)])

    if __name__ == "__main__":
        print("SUM", distrib.gather([add(x, x + 1) for x in range(12)]))
        print("TREE", tree(2).unwrap())
        if "--large" in sys.argv:  # (carried in pieces both ways: 1 MiB frames at most)
            print("ECHO", echo(b"x" * (3 << 20)).unwrap() == b"x" * (3 << 20))
        if "--stay" in sys.argv:  # (a call for each line the test writes, until it ends)
            print("STAYING", flush=True)
            for line in sys.stdin:
                print("AGAIN", add(1, 2).unwrap(timeout=60), flush=True)
    """

AGAIN = """
    import time
    import distrib
    from main import add

    if __name__ == "__main__":
        distrib.init()
        start = time.monotonic()
        print("AGAIN", add(2, 3).unwrap(timeout=5), f"{time.monotonic() - start:.2f}")
    """

IDLE = """
    import sys
    import distrib

    if __name__ == "__main__":
        distrib.init()
        print("LISTENING", flush=True)
        sys.stdin.read()
    """


def listening(port: int) -> bool:
    """Whether something accepts connections on ``port`` of the loopback (``ss``: a connect
    of our own would be a stranger's handshake in the Main's log)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
    return bool(out.stdout.strip())


def pair(path: Path) -> KeyPair:
    key = _keys.generate()
    _keys.write(path, key)
    return key


def main_env(tmp_path: Path, port: int, workers: list[str]) -> tuple[dict[str, str], KeyPair]:
    """A Main with a key, listening on ``port`` for the workers of ``workers`` (keys)."""
    main = pair(tmp_path / "main.key")
    authorized = tmp_path / "workers.authorized"
    authorized.write_text("".join(f"{k} worker {i}\n" for i, k in enumerate(workers)))
    return {"DISTRIB_KEY": str(tmp_path / "main.key"), "DISTRIB_LISTEN": f"127.0.0.1:{port}",
            "DISTRIB_AUTHORIZED_WORKERS": str(authorized)}, main


def dialling_worker(start_worker, tmp_path: Path, name: str, port: int, main_key: str):
    key = pair(tmp_path / f"{name}.key")
    worker = start_worker(name=name, extra=("--key", str(tmp_path / f"{name}.key"),
                                            "--connect", f"127.0.0.1:{port}",
                                            "--main-key", main_key))
    return worker, key


def popen(ws: Workspace, script: str, env: dict[str, str], *args: str,
          stderr: Path | None = None) -> subprocess.Popen[str]:
    full = {**os.environ, "DISTRIB_CACHE_DIR": str(ws.cache_dir), **env}
    with open(stderr or os.devnull, "w") as err:  # (the child keeps its own copy)
        return subprocess.Popen([PYTHON, script, *args], cwd=ws.root, env=full, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err if stderr else subprocess.PIPE)


def test_a_worker_that_dials_runs_calls_and_nested_calls_and_says_which_way(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    port = free_port()
    worker_key = tmp_path / "w.key"
    public = pair(worker_key).public
    env, main = main_env(tmp_path, port, [public])
    worker = start_worker(name="dialler", extra=("--key", str(worker_key), "--connect",
                                                 f"127.0.0.1:{port}", "--main-key", main.public))
    worker.status_key = main  # (the Main it dials may ask it too)
    # The Main also dials a worker that listens, as configured.
    pair(tmp_path / "l.key")
    (tmp_path / "l.authorized").write_text(f"{main.public} the Main\n")
    listening = start_worker(name="listener", extra=(
        "--key", str(tmp_path / "l.key"), "--authorized-keys", str(tmp_path / "l.authorized")))
    listening.status_key = main
    env["DISTRIB_WORKERS"] = f"{listening.address} {listening.public_key}"
    workspace.write("main.py", SCRIPT)
    with ended(popen(workspace, "main.py", env, "--stay")) as proc:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[0].strip() == f"SUM {[2 * x + 1 for x in range(12)]}", lines
        assert lines[1].strip() == "TREE 4"
        assert lines[2].strip() == "STAYING"
        # (the listening worker may have run everything before the dialler got through)
        status = wait_for(lambda: (x := worker.status())["served"] and x, 30,
                          "the dialling worker to serve the Main")
        assert status["dials"] == [{"address": f"127.0.0.1:{port}", "main_key": main.public[:8],
                                    "state": "connected", "problem": ""}]
        assert [x["link"] for x in status["served"]] == [f"out to 127.0.0.1:{port}"]
        other = listening.status()
        assert [x["link"] for x in other["served"]] == ["in"] and other["dials"] == []
        assert status["tasks_done"] + other["tasks_done"] >= 12 + 7
        out = subprocess.run([PYTHON, "-m", "distrib", "status"], capture_output=True,
                             text=True, timeout=60, env={
                                 **os.environ, "DISTRIB_KEY": str(tmp_path / "main.key"),
                                 "DISTRIB_WORKERS": f"{worker.address} {worker.public_key}"})
        assert f"dialled out to 127.0.0.1:{port}" in " ".join(out.stdout.split()), out.stdout
        proc.kill()
        proc.communicate()
    # The Main is gone: its link too; the worker dials on.
    wait_for(lambda: worker.status()["dials"][0]["state"] == "dialling", 30,
             "the worker to see its Main gone")


def test_a_main_killed_and_started_again_gets_its_dialling_worker_back(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    port = free_port()
    worker_key = tmp_path / "w.key"
    public = pair(worker_key).public
    env, main = main_env(tmp_path, port, [public])
    start_worker(name="dialler", extra=("--key", str(worker_key), "--connect",
                                        f"127.0.0.1:{port}", "--main-key", main.public))
    workspace.write("main.py", SCRIPT)
    workspace.write("again.py", AGAIN)
    with ended(popen(workspace, "main.py", env, "--stay")) as first:
        assert first.stdout is not None
        assert first.stdout.readline().startswith("SUM")
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # Started again on the same port: its first call is answered within 5 s of its start.
    with ended(popen(workspace, "again.py", env)) as again:
        out, _ = finish(again)
    word, value, seconds = out.split()
    assert (word, value) == ("AGAIN", "5"), out
    print(f"the worker was back and answered in {seconds} s")


def test_unauthorized_worker_keys_and_a_wrong_main_key_are_refused_and_logged(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    port = free_port()
    trusted = tmp_path / "trusted.key"
    trusted_public = pair(trusted).public
    env, main = main_env(tmp_path, port, [trusted_public])
    workspace.write("idle.py", IDLE)
    main_log = tmp_path / "main.log"
    with ended(popen(workspace, "idle.py", env,
                     stderr=main_log)) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "LISTENING"
        stranger, stranger_key = dialling_worker(start_worker, tmp_path, "stranger", port,
                                                 main.public)
        # The trusted worker is given another key for the Main: it must not serve it.
        fooled = start_worker(name="fooled", extra=(
            "--key", str(trusted), "--connect", f"127.0.0.1:{port}",
            "--main-key", _keys.generate().public))
        wait_for(lambda: f"key {stranger_key.public} is not in the authorized workers"
                 in main_log.read_text(), 30, "the Main to log the refused key")
        wait_for(lambda: f"refused this worker's key {stranger_key.public}" in stranger.log(),
                 30, "the refused worker to say so")
        wait_for(lambda: "did not prove the key given with --main-key" in fooled.log(), 30,
                 "the worker with the wrong Main key to say so")
        assert "dialled the Main" not in fooled.log() + stranger.log()
        # Once its owner adds the refused worker's key, as the Main's log says, the worker
        # (still dialling) is served.
        with open(tmp_path / "workers.authorized", "a") as authorized:
            authorized.write(f"{stranger_key.public} stranger\n")
        wait_for(lambda: "dialled the Main" in stranger.log(), 60,
                 "the worker refused before to be served once its key is added")
        # A second Main cannot listen on the same port, and says so.
        second = workspace.run("idle.py", env=env, timeout=60)
        assert second.returncode == 1
        assert f"ConfigError: cannot listen for workers on 127.0.0.1:{port}: Address already " \
               "in use" in second.stderr, second.stderr
        proc.kill()
        proc.communicate()


def test_a_worker_whose_main_went_silent_dials_again_and_serves_it_when_it_wakes(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    port = free_port()
    worker_key = tmp_path / "w.key"
    public = pair(worker_key).public
    env, main = main_env(tmp_path, port, [public])
    worker = start_worker(name="dialler", extra=(
        "--key", str(worker_key), "--connect", f"127.0.0.1:{port}", "--main-key", main.public,
        "--lost-after", "2"))
    workspace.write("main.py", SCRIPT)
    with ended(popen(workspace, "main.py", {**env, "DISTRIB_HEARTBEAT": "0.2",
                                            "DISTRIB_MAX_MESSAGE_MB": "1"},
                     "--large", "--stay")) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert [proc.stdout.readline().strip() for _ in range(4)][2:] == ["ECHO True",
                                                                          "STAYING"]
        # Stopped, the Main is silent on a connection that stays open (as when a NAT router
        # forgets it): the worker drops it, then dials again.
        proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: "is not served on its connection: dialling again" in worker.log(),
                     30, "the worker to dial again")
        finally:
            proc.send_signal(signal.SIGCONT)
        proc.stdin.write("more\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "AGAIN 3"
        proc.kill()
        proc.communicate()


def test_the_policy_file_names_mains_to_dial_and_the_worker_follows_its_changes(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    port = free_port()
    worker_key = tmp_path / "w.key"
    public = pair(worker_key).public
    env, main = main_env(tmp_path, port, [public])
    policy = tmp_path / "worker.toml"
    policy.write_text("threads = 2\n")
    # The owner's quota for the Main's key holds on a link the worker opened too.
    (tmp_path / "mains.authorized").write_text(f"{main.public} the Main slots=1\n")
    worker = start_worker(name="dialler", extra=(
        "--key", str(worker_key), "--authorized-keys", str(tmp_path / "mains.authorized"),
        "--policy", str(policy)))
    worker.status_key = main
    workspace.write("main.py", SCRIPT)
    with ended(popen(workspace, "main.py", env, "--stay")) as proc:
        assert proc.stdout is not None
        policy.write_text(f'threads = 2\nconnect = ["127.0.0.1:{port} {main.public}"]\n')
        assert proc.stdout.readline().startswith("SUM")  # (it waited for the worker)
        served = worker.status()["served"]
        assert [(x["quota"], x["link"]) for x in served] == [
            ("at most 1 slot(s)", f"out to 127.0.0.1:{port}")]
        policy.write_text("threads = 2\n")
        wait_for(lambda: "is no longer dialled (the policy changed)" in worker.log(), 30,
                 "the worker to stop serving the Main it no longer dials")
        proc.kill()
        proc.communicate()


@pytest.mark.long
def test_a_worker_with_exit_without_main_stops_once_its_main_is_gone_that_long(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    port = free_port()
    worker_key = tmp_path / "w.key"
    env, main = main_env(tmp_path, port, [pair(worker_key).public])
    workspace.write("main.py", SCRIPT)
    with ended(popen(workspace, "main.py", env)) as proc:  # (served while it runs)
        # The Main listens first: a worker started before it would count its 2 s from then.
        wait_for(lambda: listening(port), what=f"the Main listening on {port}")
        worker = start_worker(name="launched", extra=(
            "--key", str(worker_key), "--connect", f"127.0.0.1:{port}", "--main-key",
            main.public, "--exit-without-main", "2"))
        out, _ = finish(proc)
    assert out.startswith("SUM ")
    worker.proc.wait(30)
    assert "no Main it dials has been connected for 2 s (--exit-without-main); stopping" \
        in worker.log()

"""A worker reached through a relay on one machine (the multi-host cases are in
tests/net/test_relayed.py): named by its policy file while it runs, and serving only the Mains
its owner authorizes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from distrib.wire import _keys
from distrib.wire._keys import KeyPair
from tests.helpers import PYTHON, Worker, Workspace, stop_process, wait_for
from tests.integration.test_relay import relay_keys, start_relay  # noqa: F401 (fixtures)

SCRIPT = """
    import distrib
    from distrib import distributed

    @distributed
    def square(x):
        return x * x

    if __name__ == "__main__":
        print("SQUARES", distrib.gather([square(x) for x in range(6)]))
    """


def _relayed_worker(start_worker, tmp_path: Path, relay, pair: KeyPair, mains: str,
                    ) -> Worker:
    """Start a worker of key ``pair`` reached through ``relay``, for the Mains of the
    authorized-keys lines ``mains``."""
    _keys.write(tmp_path / "worker.key", pair)
    (tmp_path / "mains.authorized").write_text(mains)
    return start_worker(extra=(
        "--key", str(tmp_path / "worker.key"), "--authorized-keys",
        str(tmp_path / "mains.authorized"), "--no-sandbox", "--relay", relay.address,
        "--relay-key", relay.public_key))


def _relaying_env(workspace: Workspace, tmp_path: Path, relay, worker: KeyPair,
                  ) -> dict[str, str]:
    """The environment of a Main (its key in main.key) reaching ``worker`` through ``relay``."""
    return {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
            "DISTRIB_KEY": str(tmp_path / "main.key"), "DISTRIB_RELAY": relay.address,
            "DISTRIB_RELAY_KEY": relay.public_key, "DISTRIB_WORKERS": f"relay:{worker.public}"}


def test_a_relay_named_in_the_policy_file_while_the_worker_runs(
        start_worker, start_relay, relay_keys: tuple[Path, Path, KeyPair, KeyPair],  # noqa: F811
        workspace: Workspace, tmp_path: Path) -> None:
    _, _, main, worker_pair = relay_keys
    relay = start_relay()
    _keys.write(tmp_path / "main.key", main)
    _keys.write(tmp_path / "worker.key", worker_pair)
    (tmp_path / "mains.authorized").write_text(f"{main.public} the Main\n")
    policy = tmp_path / "policy.toml"
    policy.write_text("threads = 2\n")
    worker = start_worker(extra=(
        "--key", str(tmp_path / "worker.key"), "--authorized-keys",
        str(tmp_path / "mains.authorized"), "--policy", str(policy), "--no-sandbox"))
    policy.write_text(f'threads = 2\nrelay = "{relay.address} {relay.public_key}"\n')
    wait_for(lambda: "registered at relay" in worker.log(), 60, "the worker to register")
    worker.status_key = main
    assert worker.status()["relay"]["registered"]
    workspace.write("main.py", SCRIPT)
    env = {"DISTRIB_KEY": str(tmp_path / "main.key"), "DISTRIB_RELAY": relay.address,
           "DISTRIB_RELAY_KEY": relay.public_key,
           "DISTRIB_WORKERS": f"relay:{worker_pair.public}"}
    out = workspace.run("main.py", env=env)
    assert out.returncode == 0, out.stderr + worker.log()
    assert out.stdout.splitlines() == [f"SQUARES {[x * x for x in range(6)]}"]
    policy.write_text("threads = 2\n")  # (no relay any more)
    wait_for(lambda: worker.status()["relay"] is None, 60, "the worker to leave the relay")


def test_a_main_the_worker_does_not_authorize_gets_no_splice(
        start_worker, start_relay, relay_keys: tuple[Path, Path, KeyPair, KeyPair],  # noqa: F811
        workspace: Workspace, tmp_path: Path) -> None:
    _, _, main, worker_pair = relay_keys
    relay = start_relay()
    _keys.write(tmp_path / "main.key", main)
    worker = _relayed_worker(start_worker, tmp_path, relay, worker_pair,
                             f"{_keys.generate().public} another Main\n")
    wait_for(lambda: "registered at relay" in worker.log(), 60, "the worker to register")
    workspace.write("main.py", SCRIPT)
    env = _relaying_env(workspace, tmp_path, relay, worker_pair)
    log = tmp_path / "main.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([PYTHON, "main.py"], cwd=workspace.root, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        # The worker's party refuses the splice (its owner did not authorize that key); the
        # Main's log says the worker does not answer.
        wait_for(lambda: f"refused a splice from key {main.public} (not exposed to it)"
                 in worker.log(), 60, "the worker to refuse the splice")
        wait_for(lambda: f"worker relay:{worker_pair.public} has not answered" in log.read_text(),
                 60, "the Main to say the worker does not answer")
    finally:
        stop_process(proc)
    assert "SQUARES" not in log.read_text()


def test_a_main_the_relay_does_not_authorize_is_told_why(
        start_worker, start_relay, relay_keys: tuple[Path, Path, KeyPair, KeyPair],  # noqa: F811
        workspace: Workspace, tmp_path: Path) -> None:
    _, _, main, worker_pair = relay_keys
    relay = start_relay()
    stranger = _keys.generate()  # (not in the relay's authorized keys)
    _keys.write(tmp_path / "main.key", stranger)
    worker = _relayed_worker(start_worker, tmp_path, relay, worker_pair,
                             f"{stranger.public} the Main\n")
    wait_for(lambda: "registered at relay" in worker.log(), 60, "the worker to register")
    workspace.write("main.py", SCRIPT)
    out = workspace.run("main.py", env={
        "DISTRIB_KEY": str(tmp_path / "main.key"), "DISTRIB_RELAY": relay.address,
        "DISTRIB_RELAY_KEY": relay.public_key, "DISTRIB_WORKERS": f"relay:{worker_pair.public}"})
    assert out.returncode != 0
    assert f"AuthError: task square#1 cannot run: relay {relay.address} refused this Main's " \
           f"key {stranger.public}: its owner must add this Main's public key" in out.stderr, \
        out.stderr


def test_a_main_started_before_its_relayed_worker_waits_for_it(
        start_worker, start_relay, relay_keys: tuple[Path, Path, KeyPair, KeyPair],  # noqa: F811
        workspace: Workspace, tmp_path: Path) -> None:
    _, _, main, worker_pair = relay_keys
    relay = start_relay()
    _keys.write(tmp_path / "main.key", main)
    workspace.write("main.py", SCRIPT)
    env = _relaying_env(workspace, tmp_path, relay, worker_pair)
    log = tmp_path / "main.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([PYTHON, "main.py"], cwd=workspace.root, env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        # The relay answers that no such party is registered: the Main keeps trying.
        wait_for(lambda: "cannot be reached through relay" in log.read_text(), 60,
                 "the Main to try the worker")
        _relayed_worker(start_worker, tmp_path, relay, worker_pair, f"{main.public} the Main\n")
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, log.read_text()
        assert out.splitlines() == [f"SQUARES {[x * x for x in range(6)]}"]
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()

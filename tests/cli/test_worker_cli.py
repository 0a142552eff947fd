"""The `distrib worker` command as an owner runs it."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import psutil

from tests.helpers import PYTHON, Workspace, ended, finish, wait_for


def test_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    out = subprocess.run([PYTHON, "-m", "distrib", "worker", "--listen", "0.0.0.0:0",
                          "--cache-dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "refusing to listen on 0.0.0.0:0" in out.stderr


def test_bad_listen_address_names_the_option(tmp_path: Path) -> None:
    out = subprocess.run([PYTHON, "-m", "distrib", "worker", "--listen", "nonsense",
                          "--cache-dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "--listen" in out.stderr


def test_sigterm_and_sigint_stop_the_daemon_and_its_executors(start_worker,
                                                              workspace: Workspace) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        worker = start_worker(threads=1, name=f"sig{int(sig)}")
        workspace.write("main.py", """
            import sys
            from distrib import distributed

            @distributed
            def pid():
                import os
                return os.getpid()

            if __name__ == "__main__":
                print(pid().unwrap(), flush=True)
                sys.stdin.readline()  # (connected: a sandboxed Main's executors leave with it)
            """)
        with ended(workspace.start("main.py", worker)) as main:
            assert main.stdout is not None
            line = main.stdout.readline()
            assert int(line or 0) > 0, main.communicate()  # (its pid in its sandbox)
            (executor,) = worker.status()["executors"]  # (the real one, as the worker has it)
            worker.proc.send_signal(sig)
            assert worker.proc.wait(60) == 0
            wait_for(lambda: not psutil.pid_exists(executor) or
                     psutil.Process(executor).status() == psutil.STATUS_ZOMBIE,
                     what="the executor to exit")
            assert not any(worker.cache_dir.glob("runs/*")), "run folders left behind"
            finish(main)


def test_sigusr1_writes_every_threads_stack_to_the_log_and_the_daemon_goes_on(
        start_worker) -> None:
    # (how an owner, or a test, sees what a daemon that stopped answering is doing)
    worker = start_worker(threads=1)
    stacks = worker.stacks(60)
    assert "distrib/_cli.py" in stacks  # (the command, under its loop if it runs)
    assert worker.status()["slots"] == 1  # (it still answers)


def test_help_lists_the_commands() -> None:
    out = subprocess.run([PYTHON, "-m", "distrib", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "worker" in out.stdout


def test_a_port_in_use_is_a_one_line_error(start_worker, tmp_path: Path) -> None:
    worker = start_worker(threads=1)
    port = worker.address.rsplit(":", 1)[1]
    out = subprocess.run([PYTHON, "-m", "distrib", "worker", "--listen", f"127.0.0.1:{port}",
                          "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"Error: cannot listen on 127.0.0.1:{port}: Address already in use")


def test_a_relative_cache_dir_is_taken_from_where_the_worker_starts(
        start_worker, workspace: Workspace, tmp_path: Path) -> None:
    worker = start_worker(threads=1, extra=("--cache-dir", "relative-cache"))  # (the last wins)
    workspace.write("main.py", """
        from distrib import distributed

        @distributed
        def square(x):
            return x * x

        if __name__ == "__main__":
            print(square(7).unwrap(timeout=60))
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "49"
    assert any((tmp_path / "relative-cache" / "envs").iterdir())  # (its workspace went there)


def test_relay_needs_its_key_and_the_workers_key(tmp_path: Path) -> None:
    from distrib.wire import _keys

    _keys.write(tmp_path / "w.key", _keys.generate())
    base = [PYTHON, "-m", "distrib", "worker", "--cache-dir", str(tmp_path)]
    for extra, expected in (
            (["--relay", "203.0.113.9:7790"], "--relay needs --relay-key"),
            (["--relay", "203.0.113.9:7790", "--relay-key", _keys.generate().public],
             "--relay needs --relay-key (the relay's public key) and --key"),
            (["--relay", "nowhere", "--relay-key", _keys.generate().public, "--key",
              str(tmp_path / "w.key"), "--insecure", "--no-sandbox"], "--relay='nowhere'"),
            (["--relay", "h:1", "--relay-key", "not-a-key", "--key", str(tmp_path / "w.key"),
              "--insecure", "--no-sandbox"], "--relay-key")):
        out = subprocess.run(base + extra, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and expected in out.stderr, (extra, out.stderr)
    help_text = subprocess.run(base + ["--help"], capture_output=True, text=True, timeout=60)
    assert "--relay HOST:PORT" in help_text.stdout and "--relay-key KEY" in help_text.stdout

"""The `distrib relay` command as its owner runs it: what it refuses at start, and its stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from distrib.wire import _keys
from tests.helpers import PYTHON, ended


def relay(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "distrib", "relay", *args], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "TMPDIR": str(tmp_path)})


def keys(tmp_path: Path) -> tuple[str, str]:
    _keys.write(tmp_path / "relay.key", _keys.generate())
    (tmp_path / "parties").write_text(f"{_keys.generate().public} main\n")
    return "relay.key", "parties"


def test_keys_and_the_authorized_keys_file_are_required_and_checked(tmp_path: Path) -> None:
    key, parties = keys(tmp_path)
    out = relay(tmp_path, "--key", key)
    assert out.returncode == 2 and "--authorized-keys" in out.stderr
    out = relay(tmp_path, "--key", key, "--authorized-keys", "missing")
    assert out.returncode == 2 and "authorized keys missing: No such file" in out.stderr
    os.chmod(tmp_path / key, 0o644)
    out = relay(tmp_path, "--key", key, "--authorized-keys", parties)
    assert out.returncode == 2 and "readable by other users; run `chmod 600" in out.stderr
    os.chmod(tmp_path / key, 0o600)
    out = relay(tmp_path, "--key", key, "--authorized-keys", parties, "--listen", "nonsense")
    assert out.returncode == 2 and "--listen" in out.stderr


def test_a_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    key, parties = keys(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = relay(tmp_path, "--key", key, "--authorized-keys", parties, "--listen",
                    f"127.0.0.1:{port}")
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert line == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_sigterm_stops_the_relay_and_it_leaves_nothing_behind(tmp_path: Path) -> None:
    key, parties = keys(tmp_path)
    before = set(tmp_path.iterdir())
    proc = subprocess.Popen([PYTHON, "-m", "distrib", "relay", "--listen", "127.0.0.1:0",
                             "--key", key, "--authorized-keys", parties], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    with ended(proc):
        assert proc.stdout is not None
        assert "distrib relay ready on 127.0.0.1:" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    assert set(tmp_path.iterdir()) == before  # (its control socket's folder is gone)

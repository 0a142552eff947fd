"""LAN discovery between namespaces: found workers are used only if their keys are trusted."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from distrib.wire import _keys
from tests.helpers import PYTHON, Workspace
from tests.helpers import TASKS
from tests.net.netns import Network
from tests.net.test_hosts import main_key

SCRIPT = """
    import distrib
    import tasks

    if __name__ == "__main__":
        responses = tasks.ok.map(range(12))
        print("RESULT", distrib.gather(responses, timeout=120))
        print("WORKERS", sorted({r.worker for r in responses}))
    """


def announced(start_worker, host, tmp_path: Path, name: str, mains: list[str]):
    key = tmp_path / f"{name}.key"
    _keys.write(key, _keys.generate())
    auth = tmp_path / f"{name}.authorized"
    auth.write_text("".join(f"{k}\n" for k in mains))
    return start_worker(name=name, listen=f"{host.address}:7070", prefix=tuple(host.cmd()),
                        extra=("--key", str(key), "--authorized-keys", str(auth), "--announce"))


def run(network: Network, ws: Workspace, host, config: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(TASKS, ws.root / "tasks.py")
    ws.write("main.py", SCRIPT)
    ws.write("distrib.toml", config)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(ws.cache_dir)}
    return subprocess.run(host.cmd(PYTHON, "main.py"), cwd=ws.root, env=env,
                          capture_output=True, text=True, timeout=180)


def test_discovered_workers_are_used_only_when_trusted(network: Network, start_worker,
                                                       workspace: Workspace,
                                                       tmp_path: Path) -> None:
    m, h1, h2 = network.add("main"), network.add("w1"), network.add("w2")
    key, public = main_key(tmp_path)
    trusted = announced(start_worker, h1, tmp_path, "trusted", [public])
    stranger = announced(start_worker, h2, tmp_path, "stranger", [public])
    out = run(network, workspace, m, f"""
        [main]
        key = "{key}"
        [discovery]
        enabled = true
        interfaces = ["{m.address}"]
        trust = ["{trusted.public_key}"]
        """)
    assert out.returncode == 0, out.stderr
    assert "RESULT [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]" in out.stdout
    assert "WORKERS ['trusted']" in out.stdout
    assert f"its key {stranger.public_key} is not trusted" in out.stderr


def test_trust_on_first_use_remembers_the_key(network: Network, start_worker,
                                              workspace: Workspace, tmp_path: Path) -> None:
    m, h1 = network.add("main"), network.add("w1")
    key, public = main_key(tmp_path)
    worker = announced(start_worker, h1, tmp_path, "newcomer", [public])
    out = run(network, workspace, m, f"""
        [main]
        key = "{key}"
        [discovery]
        enabled = true
        interfaces = ["{m.address}"]
        trust_on_first_use = true
        """)
    assert out.returncode == 0, out.stderr
    assert "WORKERS ['newcomer']" in out.stdout
    assert "trusting worker newcomer" in out.stderr
    known = (workspace.cache_dir / "known_workers").read_text()
    assert f"{h1.address}:7070 {worker.public_key}" in known

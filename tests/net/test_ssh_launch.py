"""Workers launched on SSH hosts (``init(cluster=distrib.SSH(...))``): real ``sshd`` daemons on
network-namespace hosts with no package index, reached with the real ``ssh`` client through a
config file the test wrote; the Main runs in a namespace host of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from distrib.wire import _keys
from tests.helpers import PYTHON, Workspace, ended, finish, wait_for
from tests.net import sshd
from tests.net.netns import Host, Network

SCRIPT = """
    import sys
    import time
    import numpy as np
    import distrib
    from distrib import distributed

    @distributed
    def square(x):
        time.sleep(0.3)  # (long enough for the calls to spread over the hosts)
        return x * x

    @distributed
    def total(n):
        return int(np.arange(n).sum())

    if __name__ == "__main__":
        hosts, config = sys.argv[1].split(","), sys.argv[2]
        start = time.monotonic()
        distrib.init(cluster=distrib.SSH(hosts, threads=2, ssh_config=config))
        print("INIT", round(time.monotonic() - start, 2), flush=True)
        squares = square.map(range(30))
        print("SQUARES", [r.unwrap(timeout=120) for r in squares], flush=True)
        sums = [total(n) for n in (10, 100, 1000)]
        print("NUMPY", [r.unwrap(timeout=300) for r in sums], flush=True)
        print("WORKERS", sorted({r.worker for r in squares + sums}), flush=True)
        if len(sys.argv) > 3:
            print("UP", flush=True)
            sys.stdin.read()
    """


# One process runs this module's tests: the shared cache below builds wheels and venvs once.
pytestmark = pytest.mark.xdist_group("ssh")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels built by the Main and installed on the hosts, kept for the module's tests."""
    return tmp_path_factory.mktemp("ssh-shared")


@pytest.fixture
def ssh_hosts(network: Network, tmp_path: Path, shared_cache: Path) -> Iterator[sshd.SSHHosts]:
    why = sshd.available()
    if why:
        pytest.skip(why)
    hosts = sshd.SSHHosts(tmp_path / "ssh", shared_cache / "hosts")
    try:
        yield hosts
    finally:
        hosts.close()


def _main(network: Network, workspace: Workspace, shared_cache: Path) -> Host:
    main = network.add("main")
    workspace.write("main.py", SCRIPT)
    (workspace.cache_dir).mkdir(parents=True, exist_ok=True)
    (shared_cache / "main").mkdir(exist_ok=True)
    (workspace.cache_dir / "launch").symlink_to(shared_cache / "main")  # (wheels built once)
    return main


def _run(main: Host, workspace: Workspace, hosts: list[str], config: Path, *more: str
         ) -> subprocess.Popen[str]:
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir)}
    return subprocess.Popen(main.cmd(PYTHON, "main.py", ",".join(hosts), str(config), *more),
                            cwd=workspace.root, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _expect_results(out: str, hosts: list[str]) -> None:
    assert f"SQUARES {[x * x for x in range(30)]}" in out, out
    assert "NUMPY [45, 4950, 499500]" in out, out


@pytest.mark.timeout(300)
def test_three_hosts_run_calls_and_numpy(network: Network, ssh_hosts: sshd.SSHHosts,
                                         workspace: Workspace, shared_cache: Path) -> None:
    main = _main(network, workspace, shared_cache)
    names = [ssh_hosts.add(network.add(f"lab{i}")) for i in (1, 2, 3)]
    proc = _run(main, workspace, names, ssh_hosts.config)
    with ended(proc):
        out, err = finish(proc, 600)
    assert proc.returncode == 0, err
    _expect_results(out, names)
    workers = out.split("WORKERS", 1)[1]
    assert sum(name in workers for name in names) >= 2, out  # (spread over the hosts)
    for name in names:  # the sessions ended with the Main: no worker, no tunnel left
        wait_for(lambda: not ssh_hosts.sessions(name), 10, f"{name}'s session to end")


@pytest.mark.timeout(300)
def test_kill_9_of_the_main_leaves_nothing_on_the_hosts(
        network: Network, ssh_hosts: sshd.SSHHosts, workspace: Workspace,
        shared_cache: Path) -> None:
    main = _main(network, workspace, shared_cache)
    labs = {f"lab{i}": network.add(f"lab{i}") for i in (1, 2, 3)}
    names = [ssh_hosts.add(host) for host in labs.values()]
    proc = _run(main, workspace, names, ssh_hosts.config, "stay")
    with ended(proc):
        assert proc.stdout is not None
        lines: list[str] = []
        wait_for(lambda: lines.append(proc.stdout.readline()) or "UP\n" in lines, 600,  # type: ignore[union-attr]
                 "the Main's results")
        _expect_results("".join(lines), names)
        for name in names:
            assert any("distrib" in " ".join(p.cmdline()) and "worker" in p.cmdline()
                       for p in ssh_hosts.sessions(name)), name
        clients = [p for p in psutil.Process(proc.pid).children() if p.name() == "ssh"]
        assert len(clients) == 3
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    for name, host in labs.items():
        wait_for(lambda: not ssh_hosts.sessions(name), 10, f"{name}'s worker and session to end")
        listening = subprocess.run(host.cmd("ss", "-ltnH"), capture_output=True, text=True,
                                   timeout=30).stdout.split("\n")
        assert [line for line in listening if line.strip() and ":22 " not in line] == [], name
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                             for p in clients), 10, "the ssh clients to end")


@pytest.mark.timeout(300)
def test_unreachable_pythonless_and_full_hosts_are_named_the_others_work(
        network: Network, ssh_hosts: sshd.SSHHosts, workspace: Workspace,
        shared_cache: Path) -> None:
    main = _main(network, workspace, shared_cache)
    good = ssh_hosts.add(network.add("lab1"))
    bare = ssh_hosts.add(network.add("bare"), python_hidden=True)
    full = ssh_hosts.add(network.add("full"), disk="2M")
    gone_host = network.add("gone")
    gone = ssh_hosts.add(gone_host)
    network.cut(gone_host)
    proc = _run(main, workspace, [good, bare, full, gone], ssh_hosts.config)
    with ended(proc):
        out, err = finish(proc, 600)
    assert proc.returncode == 0, err
    _expect_results(out, [good])
    lines = err.splitlines()
    bare_lines = [line for line in lines if line.startswith(f"distrib: {bare}:")]
    gone_lines = [line for line in lines if line.startswith(f"distrib: {gone}:")]
    full_lines = [line for line in lines if line.startswith(f"distrib: {full}:")]
    print("\n".join(bare_lines + full_lines + gone_lines))  # (shown with -s)
    assert len(full_lines) == 1 and "No space left on device" in full_lines[0], err
    assert len(bare_lines) == 1 and "no Python 3.11 there" in bare_lines[0], err
    assert len(gone_lines) == 1 and "no worker started" in gone_lines[0], err
    assert "timed out" in gone_lines[0] or "No route" in gone_lines[0], err


UP_SCRIPT = """
    from distrib import distributed

    @distributed
    def triple(x):
        return 3 * x

    if __name__ == "__main__":
        responses = triple.map(range(10))
        print("TRIPLES", [r.unwrap(timeout=120) for r in responses])
        print("WORKERS", sorted({r.worker for r in responses}))
    """


def _up_workspace(workspace: Workspace, tmp_path: Path, listen: str) -> dict[str, str]:
    """A workspace whose Main is configured for `distrib up ssh` (a key, ``listen``, an empty
    authorized-workers file), and the environment its commands run with."""
    workspace.write("up.py", UP_SCRIPT)
    key = tmp_path / "main.key"
    _keys.write(key, _keys.generate())
    workspace.write("distrib.toml", f"""
        [main]
        key = "{key}"
        listen = "{listen}"
        authorized_workers = "workers.authorized"
        """)
    (workspace.root / "workers.authorized").write_text("")
    return {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir)}


@pytest.mark.timeout(300)
def test_distrib_up_ssh_serves_each_run_of_the_script(
        network: Network, ssh_hosts: sshd.SSHHosts, workspace: Workspace,
        shared_cache: Path, tmp_path: Path) -> None:
    main = _main(network, workspace, shared_cache)
    names = [ssh_hosts.add(network.add(f"lab{i}")) for i in (1, 2)]
    env = _up_workspace(workspace, tmp_path, "127.0.0.1:7788")
    # (the workspace's main.py imports numpy: sent along, the hosts having no index)
    up = subprocess.Popen(main.cmd(PYTHON, "-m", "distrib", "up", "ssh", *names, "--threads",
                                   "2", "--package", "numpy",
                                   "--ssh-config", str(ssh_hosts.config)),
                          cwd=workspace.root, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    with ended(up):
        assert up.stdout is not None
        said = [up.stdout.readline(), up.stdout.readline()]
        assert sorted(line.split(":")[0] for line in said) == names, said
        for _ in range(2):  # two runs of the script, served by the same workers
            run = subprocess.run(main.cmd(PYTHON, "up.py"), cwd=workspace.root, env=env,
                                 capture_output=True, text=True, timeout=180)
            assert run.returncode == 0, run.stderr
            assert f"TRIPLES {[3 * x for x in range(10)]}" in run.stdout, run.stdout
        # `distrib status` shows the workers the launch holds, and where they run.
        shown = subprocess.run([PYTHON, "-m", "distrib", "status", "--json"], cwd=workspace.root,
                               env=env, capture_output=True, text=True, timeout=60)
        launched = sorted((x["launched"]["kind"], x["launched"]["where"], x["launched"]["state"])
                          for x in json.loads(shown.stdout) if "launched" in x)
        assert launched == [("ssh", name, "ready") for name in names], shown.stderr
        up.send_signal(signal.SIGTERM)
        up.wait(60)
    assert up.returncode == 0
    for name in names:
        wait_for(lambda: not ssh_hosts.sessions(name), 10, f"{name}'s session to end")


def _lasting(ssh_hosts: sshd.SSHHosts) -> list[psutil.Process]:
    """The lasting workers started on the test's hosts (no longer children of any sshd)."""
    caches = [str(c) for c in ssh_hosts.caches.values()]
    found = []
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or ())
        if "lasting.authorized" in line and any(c in line for c in caches):
            found.append(p)
    return found


@pytest.mark.timeout(300)
def test_distrib_up_persist_outlives_its_command_until_distrib_down(
        network: Network, ssh_hosts: sshd.SSHHosts, workspace: Workspace,
        shared_cache: Path, tmp_path: Path) -> None:
    main = _main(network, workspace, shared_cache)
    names = [ssh_hosts.add(network.add(f"lab{i}")) for i in (1, 2)]
    env = _up_workspace(workspace, tmp_path, "0.0.0.0:7788")

    def distrib(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(main.cmd(PYTHON, "-m", "distrib", *args), cwd=workspace.root,
                              env=env, capture_output=True, text=True, timeout=180)

    try:
        up = distrib("up", "ssh", "--persist", *names, "--threads", "2", "--package", "numpy",
                     "--ssh-config", str(ssh_hosts.config))
        assert up.returncode == 0, up.stderr
        assert sorted(line.split(":")[0] for line in up.stdout.splitlines()) == names
        assert len(_lasting(ssh_hosts)) == 2
        for name in names:  # (their sessions are over: they run on their own)
            wait_for(lambda: not ssh_hosts.sessions(name), 10, f"{name}'s session to end")
        run = subprocess.run(main.cmd(PYTHON, "up.py"), cwd=workspace.root, env=env,
                             capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stderr
        assert f"TRIPLES {[3 * x for x in range(10)]}" in run.stdout, run.stdout
        down = distrib("down")
        assert down.returncode == 0, down.stderr
        assert all("stopped the lasting worker" in line for line in down.stdout.splitlines())
        assert len(down.stdout.splitlines()) == 2, down.stdout
        wait_for(lambda: not _lasting(ssh_hosts), 10, "the lasting workers to stop")
    finally:
        for p in _lasting(ssh_hosts):
            p.kill()


@pytest.mark.timeout(300)
def test_a_cluster_section_launches_without_init(
        network: Network, ssh_hosts: sshd.SSHHosts, workspace: Workspace,
        shared_cache: Path) -> None:
    main = _main(network, workspace, shared_cache)
    name = ssh_hosts.add(network.add("lab1"))
    workspace.write("up.py", UP_SCRIPT)
    workspace.write("distrib.toml", f"""
        [cluster]
        ssh = ["{name}"]
        threads = 2
        ssh_config = "{ssh_hosts.config}"
        """)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir)}
    run = subprocess.run(main.cmd(PYTHON, "up.py"), cwd=workspace.root, env=env,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert f"TRIPLES {[3 * x for x in range(10)]}" in run.stdout, run.stdout
    assert f"WORKERS ['{name}']" in run.stdout, run.stdout
    wait_for(lambda: not ssh_hosts.sessions(name), 10, f"{name}'s session to end")

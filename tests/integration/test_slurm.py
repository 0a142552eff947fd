"""Workers as Slurm jobs (``distrib.Slurm``, ``distrib up slurm``) on a real single-node Slurm
cluster that this module starts: munged, slurmctld and slurmd of the test's own, with real
``sbatch``, ``squeue`` and ``scancel``."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import PYTHON, Workspace, ended, finish, wait_for

SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scancel", "sinfo")

CONF = """\
ClusterName=distribtest
SlurmctldHost=localhost
AuthType=auth/munge
AuthInfo=socket={root}/munge/sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _free_ports(count: int) -> list[int]:
    """Ports free now, all different (held together while they are picked)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _pid(path: Path) -> int:
    return int(wait_for(lambda: path.is_file() and path.read_text().strip(), 30,
                        f"{path.name}"))


def _stop(pid: int) -> None:
    """SIGTERM, then SIGKILL; waits until the process is gone (it is not our child)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


# One process runs this module's tests: it starts the Slurm cluster below once.
pytestmark = pytest.mark.xdist_group("slurm")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A single-node Slurm cluster of 2 CPUs; the environment its commands need."""
    path = f"{os.environ.get('PATH', '')}:{SBIN}"
    missing = [c for c in DAEMONS + COMMANDS if shutil.which(c, path=path) is None]
    if missing:
        pytest.skip(f"Slurm is not installed here (no {', '.join(missing)}): "
                    "apt-get install slurm-wlm munge")
    if os.getuid() != 0:
        pytest.skip("slurmd runs jobs as their users: it needs root")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool"):
        (root / sub).mkdir(mode=0o700)
    (root / "munge" / "key").write_bytes(os.urandom(1024))
    (root / "munge" / "key").chmod(0o600)
    conf = root / "slurm.conf"
    ctld_port, d_port = _free_ports(2)
    conf.write_text(CONF.format(root=root, ctld_port=ctld_port, d_port=d_port))
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": path}
    pids: list[int] = []
    try:
        munge = root / "munge"
        subprocess.run([shutil.which("munged", path=path) or "munged", "--force",
                        f"--socket={munge}/sock", f"--key-file={munge}/key",
                        f"--pid-file={munge}/pid", f"--log-file={munge}/log",
                        f"--seed-file={munge}/seed"], env=env, check=True, timeout=30)
        pids.append(_pid(munge / "pid"))
        subprocess.run(["slurmctld", "-f", str(conf), "-i"], env=env, check=True, timeout=30)
        pids.append(_pid(root / "slurmctld.pid"))
        subprocess.run(["slurmd", "-f", str(conf), "-N", "localhost"], env=env, check=True,
                       timeout=30)
        pids.append(_pid(root / "slurmd.pid"))
        # ("idle*" is a node that does not answer: not yet registered, or its slurmd died)
        wait_for(lambda: subprocess.run(["sinfo", "-h", "-o", "%t"], env=env,
                                        capture_output=True, text=True).stdout.strip() == "idle",
                 60, "the Slurm node to be idle")
        yield env
    finally:
        for pid in reversed(pids):
            _stop(pid)


def squeue(env: dict[str, str]) -> list[str]:
    """The job ids Slurm lists."""
    out = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True,
                         text=True, check=True).stdout
    return out.split()


def start(ws: Workspace, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """Run the workspace's main.py; its jobs write their output beside the workspace
    (``JOB_LOGS``), where a failing test shows it."""
    logs = ws.root.parent / "job-logs"
    logs.mkdir(exist_ok=True)
    return subprocess.Popen([PYTHON, "main.py", *args], cwd=ws.root, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**env, "DISTRIB_CACHE_DIR": str(ws.cache_dir),
                                 "JOB_LOGS": str(logs)})


def done(main: subprocess.Popen[str], ws: Workspace, env: dict[str, str]) -> tuple[str, str]:
    """``finish``, and on failure what Slurm and the jobs said."""
    try:
        return finish(main)
    except AssertionError as exc:
        root = Path(env["SLURM_CONF"]).parent
        listed = subprocess.run(["squeue"], env=env, capture_output=True, text=True).stdout
        nodes = subprocess.run(["sinfo"], env=env, capture_output=True, text=True).stdout
        said = [f"squeue: {listed}", f"sinfo: {nodes}"]
        said += [f"{f.name}: {f.read_text()}"
                 for f in sorted((ws.root.parent / "job-logs").glob("*"))]
        said += [f"{n}: {(root / n).read_text()[-3000:]}"
                 for n in ("slurmctld.log", "slurmd.log")]
        raise AssertionError("\n".join([str(exc), *said])) from None


SEED = """
    import sys
    import os
    import distrib
    from distrib import distributed

    @distributed
    def square(x):
        return x * x

    if __name__ == "__main__":
        LOGS = [f"--output={os.environ['JOB_LOGS']}/job-%j.out"]
        cluster = distrib.Slurm(cpus_per_task=1, time="10:00", sbatch_args=LOGS, poll=0.3)
        distrib.init(cluster=cluster)
        print("JOB", *cluster.job_ids, flush=True)
        sys.stdin.readline()  # (the test looks at squeue meanwhile)
        rs = [square(x) for x in range(6)]
        print("RESULTS", [r.unwrap(timeout=90) for r in rs], *sorted({r.worker for r in rs}),
              flush=True)
        if "--stay" in sys.argv:
            sys.stdin.readline()
    """


def test_a_scripts_tasks_run_on_its_slurm_job_which_ends_with_it(
        slurm: dict[str, str], workspace: Workspace) -> None:
    workspace.write("main.py", SEED)
    with ended(start(workspace, slurm)) as main:
        assert main.stdout is not None and main.stdin is not None
        job = main.stdout.readline().split()[1]
        assert job in squeue(slurm)
        main.stdin.write("\n")
        main.stdin.flush()
        out, err = done(main, workspace, slurm)
    assert f"RESULTS [0, 1, 4, 9, 16, 25] slurm-{job}.0" in out, err
    wait_for(lambda: not squeue(slurm), 10, "squeue to be empty after the Main's exit")
    assert not list((workspace.cache_dir / "slurm").iterdir())  # (its keys are gone)


def test_the_job_ends_within_seconds_of_a_main_killed_with_sigkill(
        slurm: dict[str, str], workspace: Workspace) -> None:
    workspace.write("main.py", SEED)
    with ended(start(workspace, slurm, "--stay")) as main:
        assert main.stdout is not None and main.stdin is not None
        job = main.stdout.readline().split()[1]
        main.stdin.write("\n")
        main.stdin.flush()
        assert main.stdout.readline().startswith("RESULTS"), main.stderr
        assert job in squeue(slurm)
        main.kill()
        main.wait()
    wait_for(lambda: not squeue(slurm), 10, "squeue to be empty after kill -9 of the Main")
    wait_for(lambda: not list((workspace.cache_dir / "slurm").iterdir()), 10,
             "the launcher's folder to be removed")


def test_a_job_whose_main_and_watchdog_are_both_killed_ends_by_its_workers(
        slurm: dict[str, str], workspace: Workspace) -> None:
    workspace.write("main.py", SEED.replace('poll=0.3', 'poll=0.3, exit_without_main=1'))
    with ended(start(workspace, slurm, "--stay")) as main:
        assert main.stdout is not None and main.stdin is not None
        job = main.stdout.readline().split()[1]
        main.stdin.write("\n")
        main.stdin.flush()
        assert main.stdout.readline().startswith("RESULTS"), main.stderr
        [watchdog] = [p for p in psutil.Process(main.pid).children()
                      if "distrib.launch._watchdog" in p.cmdline()]
        watchdog.kill()  # (a zombie of the Main's until the Main, killed next, is gone)
        main.kill()
        main.wait()
    assert job in squeue(slurm)  # (nothing cancelled it: its workers end it)
    wait_for(lambda: not squeue(slurm), 20, "the job to end without its Main")


ADAPTIVE = """
    import time
    import os
    import distrib
    from distrib import distributed

    @distributed
    def nap(x):
        time.sleep(0.2)
        return x

    if __name__ == "__main__":
        LOGS = [f"--output={os.environ['JOB_LOGS']}/job-%j.out"]
        cluster = distrib.Slurm(cpus_per_task=1, time="10:00", sbatch_args=LOGS, min_jobs=0,
                                max_jobs=2,
                                idle_timeout=2, poll=0.3)
        distrib.init(cluster=cluster)
        print("START", len(cluster.job_ids), flush=True)
        most = 0
        rs = [nap(x) for x in range(40)]  # (the first worker queues 17: the rest wait)
        while not all(r.done() for r in rs):
            most = max(most, len(cluster.job_ids))
            time.sleep(0.05)
        print("BURST", sorted(r.unwrap() for r in rs) == list(range(40)), most,
              len({r.worker for r in rs}), flush=True)
        deadline = time.monotonic() + 60
        while cluster.job_ids and time.monotonic() < deadline:
            time.sleep(0.1)
        print("IDLE", len(cluster.job_ids), flush=True)
    """


def test_a_burst_grows_from_no_job_to_max_jobs_and_idling_shrinks_back(
        slurm: dict[str, str], workspace: Workspace) -> None:
    workspace.write("main.py", ADAPTIVE)
    with ended(start(workspace, slurm)) as main:
        out, err = done(main, workspace, slurm)
    assert "START 0\n" in out
    assert "BURST True 2 2\n" in out, (out, err)
    assert "IDLE 0\n" in out, (out, err)
    wait_for(lambda: not squeue(slurm), 10, "squeue to be empty")


REFUSED = """
    import distrib

    if __name__ == "__main__":
        try:
            distrib.init(cluster=distrib.Slurm(partition="nosuch", time="10:00"))
        except distrib.LaunchError as exc:
            print("ERROR", exc)
    """


def test_a_job_sbatch_refuses_fails_init_with_one_line_naming_it(
        slurm: dict[str, str], workspace: Workspace) -> None:
    workspace.write("main.py", REFUSED)
    with ended(start(workspace, slurm)) as main:
        out, err = done(main, workspace, slurm)
    assert re.fullmatch(r"ERROR Slurm job distrib-\w+: sbatch refused it: sbatch: error: "
                        r".*invalid partition.*\n", out), (out, err)
    assert not list((workspace.cache_dir / "slurm").iterdir())


def _lines_naming(job: str, err: str) -> list[str]:
    """The lines of a Main's stderr that name ``job``."""
    return [line for line in err.splitlines() if job in line]


# A script whose one job never gets a worker to it (ARGS: how), waiting for it to end.
UNSTARTED = """
    import time
    import os
    import distrib

    if __name__ == "__main__":
        LOGS = [f"--output={os.environ['JOB_LOGS']}/job-%j.out"]
        cluster = distrib.Slurm(cpus_per_task=1, time="10:00", ARGS)
        distrib.init(cluster=cluster)
        print("JOB", *cluster.job_ids, flush=True)
        deadline = time.monotonic() + 60
        while cluster.job_ids and time.monotonic() < deadline:
            time.sleep(0.1)
    """


def test_a_job_that_never_starts_is_cancelled_with_one_line_naming_it(
        slurm: dict[str, str], workspace: Workspace) -> None:
    workspace.write("main.py", UNSTARTED.replace(
        "ARGS", 'sbatch_args=[*LOGS, "--hold"], start_timeout=1, poll=0.3'))
    with ended(start(workspace, slurm)) as main:
        out, err = done(main, workspace, slurm)
    job = out.split()[1]
    said = _lines_naming(job, err)
    assert len(said) == 1 and re.fullmatch(
        rf"distrib: Slurm job {job} \(distrib-\w+\) did not start within 1 s \(pending: "
        r"JobHeldUser\); cancelled it", said[0]), err
    wait_for(lambda: not squeue(slurm), 10, "squeue to be empty")


def test_a_job_whose_workers_cannot_start_ends_with_one_line_naming_its_output(
        slurm: dict[str, str], workspace: Workspace) -> None:
    workspace.write("main.py", UNSTARTED.replace(
        "ARGS", 'sbatch_args=LOGS, worker_args=["--no-such-flag"], poll=0.3'))
    with ended(start(workspace, slurm)) as main:
        out, err = done(main, workspace, slurm)
    job = out.split()[1]
    said = _lines_naming(job, err)
    assert len(said) == 1 and re.fullmatch(
        rf"distrib: Slurm job {job} \(distrib-\w+\) ended \(its time limit, or its workers "
        rf"stopped: see \S+/job-{job}\.out\)", said[0]), err


USER = """
    from distrib import distributed

    @distributed
    def square(x):
        return x * x

    if __name__ == "__main__":
        rs = [square(x) for x in range(4)]
        print("RESULTS", [r.unwrap(timeout=90) for r in rs], *sorted({r.worker for r in rs}))
    """


def test_distrib_up_slurm_holds_a_job_for_the_mains_started_meanwhile(
        slurm: dict[str, str], workspace: Workspace, tmp_path: Path) -> None:
    workspace.write("main.py", USER)
    [port] = _free_ports(1)
    cache = tmp_path / "up-cache"
    (tmp_path / "job-logs").mkdir()
    up = subprocess.Popen([PYTHON, "-m", "distrib", "up", "slurm", "--time", "10:00",
                           "--listen", f"127.0.0.1:{port}", "--cache-dir", str(cache),
                           f"--sbatch-arg=--output={tmp_path}/job-logs/job-%j.out"],
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=slurm)
    with ended(up):
        assert up.stderr is not None
        said = up.stderr.readline()
        job = re.search(r"Slurm job (\d+) \(distrib-\w+\) submitted", said)
        assert job, said
        exports = (cache / "slurm" / "up.env").read_text().removeprefix("export ").split()
        env = {**slurm, **dict(x.split("=", 1) for x in exports)}
        for _ in range(2):  # (a second Main finds the same workers)
            with ended(start(workspace, env)) as main:
                out, err = done(main, workspace, env)
            assert f"RESULTS [0, 1, 4, 9] slurm-{job.group(1)}.0" in out, err
        # `distrib status` shows the job the launch holds, and its state (as squeue said at
        # the launch's last look, every 2 s: the runs above may end before it sees "running").
        expected = [("slurm", f"job {job.group(1)}", "running", str(up.pid))]
        seen: list[object] = []

        def shows_it() -> bool:
            shown = subprocess.run([PYTHON, "-m", "distrib", "status", "--json"], text=True,
                                   capture_output=True, timeout=60, check=True,
                                   env={**slurm, "DISTRIB_CACHE_DIR": str(cache)})
            seen[:] = [(x["kind"], x["where"].split(" (")[0], x["state"], x["main_pid"])
                       for x in (y["launched"] for y in json.loads(shown.stdout)
                                 if "launched" in y)]
            return seen == expected

        try:
            wait_for(shows_it, 30, f"distrib status to show {expected}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it showed {seen}") from None
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
    wait_for(lambda: not squeue(slurm), 10, "squeue to be empty after distrib up ends")
    assert not (cache / "slurm" / "up.env").exists()

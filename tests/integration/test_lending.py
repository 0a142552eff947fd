"""A lent machine as its owner sets it: a policy file edited while the worker runs, lending
only while the machine is idle or within hours, and quotas per Main. Real daemons."""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PYTHON, Workspace, ended, finish, stop_process, wait_for
from tests.integration.test_keys import keygen, keyed_worker

# Tasks here write their runs to a log of the test's, outside their tree: workers lend
# without a sandbox, which would hide it (test_sandbox.py tests the sandbox).
UNBOXED = ("--no-sandbox",)

JOBS = """
    import os, sys, time
    import distrib
    from distrib import distributed

    @distributed
    def job(i, seconds, log):
        start = time.time()
        if seconds < 0:  # the first run is long; a run after it was handed back is short
            with open(log + ".first", "a") as f:
                f.write(f"{i}\\n")
            seconds = 30 if os.path.getsize(log + ".first") <= len(f"{i}\\n") else 0.5
        time.sleep(seconds)
        with open(log, "a") as f:  # (outside the workspace: not private)
            f.write(f"{i} {start} {time.time()} {os.environ.get('MAIN', '')}\\n")
        return i

    if __name__ == "__main__":
        count, seconds, log = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
        distrib.init()
        done = distrib.gather([job(i, seconds, log) for i in range(count)], timeout=300)
        print("DONE", done == list(range(count)))
    """


def runs(log: Path) -> list[tuple[int, float, float, str]]:
    """(task, start, end, Main) of each finished run in ``log``."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        i, start, end, *main = line.split()
        out.append((int(i), float(start), float(end), main[0] if main else ""))
    return out


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def start_main(workspace: Workspace, args: list[str], workers: str,
               env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "main.py", *args], cwd=workspace.root, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
             "DISTRIB_WORKERS": workers, **(env or {})})


def test_editing_the_policy_file_changes_the_slots_while_tasks_run(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    policy = tmp_path / "worker.toml"
    policy.write_text("threads = 4\n")
    worker = start_worker(threads=4, extra=("--policy", str(policy), *UNBOXED))
    workspace.write("main.py", JOBS)
    log = tmp_path / "runs.log"
    with ended(start_main(workspace, ["40", "0.4", str(log)], worker.address)) as main:
        wait_for(lambda: worker.status()["busy"] == 4, what="four slots busy")
        policy.write_text("threads = 1  # the owner needs the machine\n")
        wait_for(lambda: worker.status()["busy"] == 1, what="one slot busy after the change")
        settled = datetime.datetime.now().timestamp()
        wait_for(lambda: len([r for r in runs(log) if r[1] > settled]) >= 3,
                 what="three tasks run on one slot")
        back = datetime.datetime.now().timestamp()
        policy.write_text("threads = 4\n")
        wait_for(lambda: worker.status()["busy"] == 4, what="four slots busy again")
        out, err = finish(main)
    assert out.splitlines() == ["DONE True"], err[-3000:]
    done = runs(log)
    assert sorted(r[0] for r in done) == list(range(40))  # each once
    # After the change settled and before the slots came back, one task at a time.
    assert most_at_once([(s, min(e, back)) for _, s, e, _ in done if settled < s < back]) == 1
    assert "policy from" in worker.log() and "threads 1" in worker.log()


def test_a_bad_edit_of_the_policy_file_keeps_the_policy_and_says_why(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    policy = tmp_path / "worker.toml"
    policy.write_text("threads = 2\n")
    worker = start_worker(threads=1, extra=("--policy", str(policy), *UNBOXED))
    assert worker.status()["slots"] == 2  # the file goes over the flag
    policy.write_text("threads = two\n")
    wait_for(lambda: "policy not changed" in worker.log(), what="the bad edit logged")
    assert "is not valid TOML" in worker.log() and worker.status()["slots"] == 2
    policy.write_text("nice = 12\n")  # threads no longer set: the flag's number again
    wait_for(lambda: worker.status()["slots"] == 1, what="the flag's threads back")
    assert worker.status()["policy"] == "threads 1, nice 12"
    bad = tmp_path / "bad.toml"
    bad.write_text('when_idle = "sometimes"\n')
    out = subprocess.run([PYTHON, "-m", "distrib", "worker", "--policy", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"{bad} when_idle='sometimes': expected \"finish\"" in out.stderr


@contextlib.contextmanager
def owner_busy() -> Iterator[None]:
    """The owner's own work: a process spinning on each core, until the block ends."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for burner in burners:
            stop_process(burner)


# The worker counts every other process on the machine as its owner's load, and owner_busy()
# loads every core: these run alone, after the rest of the suite.
@pytest.mark.alone
def test_when_idle_the_owners_own_load_sends_tasks_elsewhere_until_it_ends(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    lender = start_worker(threads=2, name="lender",
                          extra=("--when-idle", "finish", "--idle-load", "0.75", *UNBOXED))
    other = start_worker(threads=2, name="other", extra=UNBOXED)
    workspace.write("main.py", JOBS)
    log = tmp_path / "runs.log"
    with ended(start_main(workspace, ["30", "0.5", str(log)],
                          f"{lender.address},{other.address}")) as main:
        wait_for(lambda: lender.status()["busy"] == 2, what="the lender busy")
        with owner_busy():
            wait_for(lambda: lender.status()["state"] == "paused", timeout=30,
                     what="the lender to stop lending")
            stopped = datetime.datetime.now().timestamp()
            out, err = finish(main)
            assert "its owner's own programs use" in lender.status()["why"]
    assert out.splitlines() == ["DONE True"], err[-3000:]
    assert ") stops lending, its owner's own programs use" in err
    done = runs(log)
    assert sorted(r[0] for r in done) == list(range(30))  # each once
    assert len({r[0] for r in done if r[1] > stopped}) > 4  # the rest ran elsewhere
    wait_for(lambda: lender.status()["state"] == "serving", timeout=60,
             what="the lender to lend again once the owner's work ended")
    out = workspace.run("main.py", "2", "0", str(log), env={"DISTRIB_WORKERS": lender.address})
    assert out.stdout.splitlines() == ["DONE True"], out.stderr[-3000:]


@pytest.mark.alone  # (as above)
def test_vacate_hands_a_running_task_back_and_it_completes_elsewhere_once(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    lender = start_worker(threads=1, name="lender",
                          extra=("--when-idle", "vacate", "--idle-load", "0.75", *UNBOXED))
    other = start_worker(threads=1, name="other", extra=UNBOXED)
    control = [PYTHON, "-m", "distrib", "worker", "--cache-dir", str(other.cache_dir)]
    subprocess.run([*control[:4], "pause", *control[4:]], check=True, timeout=60)
    workspace.write("main.py", JOBS)
    log = tmp_path / "runs.log"
    with ended(start_main(workspace, ["1", "-1", str(log)],
                          f"{lender.address},{other.address}")) as main:
        wait_for(lambda: lender.status()["busy"] == 1, what="the long task on the lender")
        subprocess.run([*control[:4], "resume", *control[4:]], check=True, timeout=60)
        with owner_busy():
            wait_for(lambda: lender.status()["state"] == "paused", timeout=30,
                     what="the lender to vacate")
            out, err = finish(main, timeout=120)
    assert out.splitlines() == ["DONE True"], err[-3000:]
    assert [r[0] for r in runs(log)] == [0]  # completed once, on the second try
    assert (tmp_path / "runs.log.first").read_text().split() == ["0", "0"]  # started twice
    assert "vacates: its running tasks are stopped" in lender.log()
    assert other.status()["tasks_done"] == 1 and lender.status()["tasks_done"] == 0


def test_outside_its_hours_a_worker_lends_nothing_until_the_hours_change(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    later = datetime.datetime.now() + datetime.timedelta(hours=12)
    policy = tmp_path / "worker.toml"
    policy.write_text(f'hours = "{later:%H}:00-{later:%H}:30"\n')
    closed = start_worker(threads=2, name="closed", extra=("--policy", str(policy), *UNBOXED))
    other = start_worker(threads=2, name="other", extra=UNBOXED)
    assert closed.status()["state"] == "paused"
    assert closed.status()["why"].startswith("outside its lending hours")
    workspace.write("main.py", JOBS)
    log = tmp_path / "runs.log"
    out = workspace.run("main.py", "6", "0", str(log),
                        env={"DISTRIB_WORKERS": f"{closed.address},{other.address}"})
    assert out.stdout.splitlines() == ["DONE True"], out.stderr[-3000:]
    assert ") stops lending, outside its lending hours" in out.stderr
    assert closed.status()["tasks_done"] == 0 and other.status()["tasks_done"] == 6
    policy.write_text('hours = "Mon-Sun"\n')
    wait_for(lambda: closed.status()["state"] == "serving", what="the new hours read")
    out = workspace.run("main.py", "2", "0", str(log),
                        env={"DISTRIB_WORKERS": closed.address})
    assert out.stdout.splitlines() == ["DONE True"], out.stderr[-3000:]


def test_a_main_with_a_quota_never_holds_more_slots_while_another_uses_the_rest(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    small, big = keygen(tmp_path / "small.key"), keygen(tmp_path / "big.key")
    worker, _ = keyed_worker(start_worker, tmp_path, "lender", [f"{small} small slots=1", big],
                             threads=4, extra=UNBOXED)
    workspace.write("main.py", JOBS)
    log = tmp_path / "runs.log"
    address = f"{worker.address} {worker.public_key}"
    mains = [start_main(workspace, ["12", "0.3", str(log)], address,
                        {"DISTRIB_KEY": str(tmp_path / f"{name}.key"), "MAIN": name})
             for name in ("small", "big")]
    try:
        # The owner sees who holds the slots: each Main by name and key, with its quota.
        served = wait_for(lambda: [x for x in worker.status()["served"]
                                   if x["held"] and x["key"] == small[:8]], what="small served")
        assert served[0]["quota"] == "at most 1 slot(s)" and served[0]["held"] == 1
        outs = [finish(main) for main in mains]
    finally:
        for main in mains:
            stop_process(main)
    for out, err in outs:
        assert out.splitlines() == ["DONE True"], err[-3000:]
    done = runs(log)
    assert sorted(r[0] for r in done if r[3] == "small") == list(range(12))
    assert most_at_once([(s, e) for _, s, e, who in done if who == "small"]) == 1
    assert most_at_once([(s, e) for _, s, e, who in done if who == "big"]) >= 3
    assert "serving Main" in worker.log() and "at most 1 slot(s)" in worker.log()


def test_a_quota_lowered_in_the_file_mid_run_takes_effect_and_no_task_is_lost(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    main_key = keygen(tmp_path / "main.key")
    worker, auth = keyed_worker(start_worker, tmp_path, "lender", [f"{main_key} alice"],
                                threads=4, extra=UNBOXED)
    assert worker.status_key is not None
    workspace.write("main.py", JOBS)
    log = tmp_path / "runs.log"
    with ended(start_main(workspace, ["30", "0.3", str(log)],
                          f"{worker.address} {worker.public_key}",
                          {"DISTRIB_KEY": str(tmp_path / "main.key")})) as main:
        wait_for(lambda: worker.status()["busy"] == 4, what="alice on four slots")
        auth.write_text(f"{main_key} alice slots=1\n{worker.status_key.public} the test\n")
        wait_for(lambda: worker.status()["busy"] == 1, what="alice down to one slot")
        settled = datetime.datetime.now().timestamp()
        assert worker.status()["served"][0]["quota"] == "at most 1 slot(s)"
        out, err = finish(main)
    assert out.splitlines() == ["DONE True"], err[-3000:]
    done = runs(log)
    assert sorted(r[0] for r in done) == list(range(30))  # each once
    assert most_at_once([(s, e) for _, s, e, _ in done if s > settled]) == 1


def test_a_nice_changed_in_the_policy_file_reaches_running_executors(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    policy = tmp_path / "worker.toml"
    policy.write_text("nice = 11\n")
    worker = start_worker(threads=1, extra=("--policy", str(policy), *UNBOXED))
    workspace.write("main.py", """
        import os, sys
        from distrib import distributed

        @distributed
        def niceness():
            return os.getpriority(os.PRIO_PROCESS, 0), os.getpid()

        if __name__ == "__main__":
            print("NICE", *niceness().unwrap(timeout=60))
        """)
    env = {"DISTRIB_WORKERS": worker.address}
    first = workspace.run("main.py", env=env).stdout.split()
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert first[:2] == ["NICE", str(max(11, own))]
    policy.write_text("nice = 16\n")
    wait_for(lambda: "nice 16" in worker.log(), what="the new policy read")
    second = workspace.run("main.py", env=env).stdout.split()
    assert second[1] == str(max(16, own))
    assert second[2] == first[2]  # the executor that was running, reniced

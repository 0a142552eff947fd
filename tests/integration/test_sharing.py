"""Several Mains on one worker: slots are shared fairly across environments (real daemons)."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from distrib.wire import _codec
from distrib.wire import _messages as m
from distrib.workspace._manifest import Entry, encode_manifest, scan

from tests.helpers import Workspace, ended, finish, free_port, raw_main, wait_for, with_tasks

RUN = """
    import sys
    import tasks
    from distrib import gather

    if __name__ == "__main__":
        count, seconds = int(sys.argv[1]), float(sys.argv[2])
        responses = [tasks.sleeper(seconds) for _ in range(count)]
        print("STARTED", flush=True)
        print("DONE", gather(responses, timeout=300) == [seconds] * count, flush=True)
    """


def start(ws: Workspace, worker: str, count: int, seconds: float) -> subprocess.Popen[str]:
    with_tasks(ws).write("main.py", RUN)
    return ws.start("main.py", worker, str(count), str(seconds))


@pytest.mark.parametrize("mains", [2, 3])
def test_a_new_main_with_another_workspace_gets_its_share_of_the_slots_at_once(
        mains: int, tmp_path: Path, start_worker, cache_dir: Path) -> None:
    slots = 2 * mains
    worker = start_worker(threads=slots)
    spaces = []
    for i in range(mains):
        ws = Workspace(tmp_path / f"ws{i}", cache_dir)
        ws.root.mkdir()
        ws.write("marker.txt", f"workspace {i}: an environment of its own")
        spaces.append(ws)
    with contextlib.ExitStack() as stack:
        for n, ws in enumerate(spaces[:-1], 1):  # long runs, each a minute of work or more
            stack.enter_context(ended(start(ws, worker.address, 2000, 0.05)))
            wait_for(lambda: len(worker.status()["held"]) == n, what=f"long run {n} served")
        last = stack.enter_context(ended(start(spaces[-1], worker.address, 40, 0.05)))
        held_by_last = []
        while last.poll() is None:  # sample the worker's own counters while all have work
            held = worker.status()["held"]
            held_by_last += [n for name, n in held.items() if name.endswith(f":{last.pid}")]
            time.sleep(0.05)
        out, _ = finish(last)
        assert out.splitlines() == ["STARTED", "DONE True"]
        # It did not wait for the long runs (most of their tasks have not run yet), and it
        # held its share of the slots, never more while the others wanted them.
        assert worker.status()["tasks_done"] < 1000
        assert max(held_by_last) == 2, held_by_last


def test_a_failed_fetch_fails_that_run_only_and_the_next_run_succeeds(
        workspace: Workspace, start_worker) -> None:
    workspace.write("data.txt", "as scanned\n")
    with_tasks(workspace).write("main.py", """
        import sys
        import distrib, tasks

        if __name__ == "__main__":
            distrib.init()  # the workspace is scanned here
            if sys.argv[1:] == ["change"]:
                with open("data.txt", "w") as f:  # ... and changed before the worker fetched it
                    f.write("changed\\n")
                print("CHANGED", flush=True)
            try:
                print("RESULT", distrib.gather(tasks.ok.map(range(4)), timeout=60))
            except distrib.WorkspaceError as exc:
                print("FAILED", "changed or vanished" in str(exc))
        """)
    # The worker starts once the file has changed: its fetch comes after, whatever the speed
    # (a worker already there could fetch between the scan and the change).
    address = f"127.0.0.1:{free_port()}"
    with ended(workspace.start("main.py", f"tcp://{address}", "change")) as main:
        assert main.stdout is not None and main.stdout.readline() == "CHANGED\n"
        worker = start_worker(threads=2, listen=address)
        out, _ = finish(main)
    assert out.splitlines() == ["FAILED True"]
    workspace.write("data.txt", "as scanned\n")  # the same content (the same id) as that run
    out2 = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out2.stdout.splitlines() == ["RESULT [1, 2, 3, 4]"], out2.stderr[-2000:]


def test_a_hostile_main_can_neither_squat_nor_fail_another_mains_distribution(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2, env={"DISTRIB_MAX_MESSAGE_MB": "512"})
    main = with_tasks(workspace).write("main.py", """
        import distrib, tasks

        if __name__ == "__main__":
            print("RESULT", distrib.gather(tasks.ok.map(range(4)), timeout=120))
        """)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": worker.address}
    with raw_main(worker, "evil") as evil:  # an authorized but hostile Main
        # 1. It claims the victim's distribution first and never sends its manifest.
        squatted = scan(workspace.root, main).dist_id
        evil.send_multipart(_codec.encode(m.Submit([m.TaskSpec(1, squatted, 1, None, 0,
                                                               [b"junk"], 0)])))
        out = workspace.run("main.py", env=env)
        assert out.stdout.splitlines() == ["RESULT [1, 2, 3, 4]"], out.stderr[-2000:]
        # 2. It says the victim's next distribution failed, again and again, while it is
        # being fetched (20 MB, so that takes a moment).
        workspace.root.joinpath("big.bin").write_bytes(os.urandom(20_000_000))
        target = scan(workspace.root, main).dist_id
        with ended(workspace.start("main.py", worker)) as victim:
            while victim.poll() is None:
                evil.send_multipart(_codec.encode(m.DistFailed(target, "gotcha")))
                time.sleep(0.01)
            out, _ = finish(victim)
        assert out.splitlines() == ["RESULT [1, 2, 3, 4]"]
    log = worker.log()
    assert "its source sent nothing for 3 s; asking another Main for it" in log
    assert "ignored DistFailed for environment" in log


def test_idle_executors_stop_after_the_owner_set_time(workspace: Workspace,
                                                      start_worker) -> None:
    worker = start_worker(threads=2, extra=("--idle-executors", "1"))
    with_tasks(workspace).write("main.py", """
        import distrib, tasks

        if __name__ == "__main__":
            print("RESULT", distrib.gather(tasks.ok.map(range(4)), timeout=60))
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.stdout.splitlines() == ["RESULT [1, 2, 3, 4]"], out.stderr[-2000:]
    started = worker.status()["executors_started"]
    assert started >= 1
    wait_for(lambda: worker.status()["executors"] == [], what="the idle executors stopped")


def test_a_daemon_killed_with_9_leaves_nothing_behind_once_another_starts(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2, name="w")
    workspace.write("data.txt", "x")
    with_tasks(workspace).write("main.py", """
        import sys
        import distrib, tasks

        if __name__ == "__main__":
            print("RESULT", distrib.gather(tasks.ok.map(range(4)), timeout=60), flush=True)
            sys.stdin.readline()  # (connected: a sandboxed Main's run stays until it leaves)
        """)
    runs = worker.cache_dir / "runs"
    with ended(workspace.start("main.py", worker)) as main:
        assert main.stdout is not None
        assert main.stdout.readline() == "RESULT [1, 2, 3, 4]\n", main.communicate()
        left = [p for p in runs.iterdir()]
        assert len(left) == 1 and any(left[0].iterdir())  # its task layers
        os.kill(worker.pid, signal.SIGKILL)
        worker.proc.wait(30)
        finish(main)
    again = start_worker(threads=2, name="w")  # the same cache folder
    assert not left[0].exists()
    assert all(p.name.startswith(f"{again.pid}-") for p in runs.iterdir())


def disk_use(root: Path) -> int:
    """Bytes under ``root``, each file counted once (hard links are free).

    The worker may still be removing the last Main's sandbox box while this walks: what
    vanishes meanwhile is not kept, so it is not counted (``os.walk`` skips such folders).
    Written apart from the worker's own ``_envs._disk_use`` on purpose: the cache's bound
    this test checks is kept with that one, which must not be its own witness.
    """
    seen, total = set(), 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


SMALL_RUN = """
    import distrib, tasks

    if __name__ == "__main__":
        print("RESULT", distrib.gather(tasks.ok.map(range(2)), timeout=180))
    """


@pytest.mark.long
@pytest.mark.timeout(300)  # ten Mains one after another: a minute on two loaded cores
def test_the_cache_stays_under_its_limit_as_thirty_megabytes_pass(workspace: Workspace,
                                                                  start_worker) -> None:
    worker = start_worker(threads=2, extra=("--max-cache", "10M"),
                          env={"DISTRIB_MAX_MESSAGE_MB": "512"})
    with_tasks(workspace).write("main.py", SMALL_RUN)
    for i in range(10):  # each run ships a different 3 MB workspace: 3x the limit in all
        (workspace.root / "data.bin").write_bytes(os.urandom(3_000_000))
        out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
        assert out.stdout.splitlines() == ["RESULT [1, 2]"], out.stderr[-2000:]
    assert disk_use(worker.cache_dir) < 20_000_000


@pytest.mark.long
@pytest.mark.timeout(300)  # shipping 120 MB twice: half a minute on two loaded cores
def test_a_small_change_to_a_large_workspace_adds_about_its_size(workspace: Workspace,
                                                                 start_worker) -> None:
    worker = start_worker(threads=2, env={"DISTRIB_MAX_MESSAGE_MB": "512"})
    with_tasks(workspace).write("main.py", SMALL_RUN)
    for i in range(4):  # 120 MB of data
        (workspace.root / f"data-{i}.bin").write_bytes(os.urandom(30_000_000))
    workspace.write("settings.py", "VALUE = 1\n")
    env = {"DISTRIB_WORKERS": worker.address}
    out = workspace.run("main.py", env=env)
    assert out.stdout.splitlines() == ["RESULT [1, 2]"], out.stderr[-3000:]
    before = disk_use(worker.cache_dir)
    workspace.write("settings.py", "VALUE = 1234\n")  # 3 bytes more
    out = workspace.run("main.py", env=env)
    assert out.stdout.splitlines() == ["RESULT [1, 2]"], out.stderr[-3000:]
    grown = disk_use(worker.cache_dir) - before
    assert 0 < grown < 1_000_000, grown  # a new small blob, links and compiled modules


def test_a_main_past_the_worker_queue_allowance_waits_and_loses_nothing(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2, extra=("--max-queued", "1M"),
                          env={"DISTRIB_MAX_MESSAGE_MB": "512"})
    with_tasks(workspace).write("main.py", """
        import distrib, tasks

        if __name__ == "__main__":
            args = [bytes([i]) * 200_000 for i in range(60)]
            print("LENGTHS", set(distrib.gather([tasks.length(a) for a in args], timeout=120)))
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.stdout.splitlines() == ["LENGTHS {200000}"], out.stderr[-2000:]
    status = worker.status()
    assert status["deferred"] > 0 and status["tasks_done"] == 60


def test_a_flood_of_queued_payloads_keeps_the_daemon_memory_bounded(start_worker) -> None:
    worker = start_worker(threads=1, extra=("--max-queued", "64M"))
    daemon = psutil.Process(worker.pid)
    before = daemon.memory_info().rss
    peak = 0
    with raw_main(worker, "flood") as flood:
        payload = os.urandom(1_000_000)  # under the test workers' 1 MiB frame limit
        for batch in range(150):  # 1,500 tasks of 1 MB for a distribution that never comes
            specs = [m.TaskSpec(batch * 10 + i, "f" * 64, 1, None, 0, [], 1) for i in range(10)]
            flood.send_multipart(_codec.encode(m.Submit(specs, frames=(payload,) * 10)))
            peak = max(peak, daemon.memory_info().rss)
        wait_for(lambda: worker.status()["deferred"] + worker.status()["queued"] >= 1500,
                 what="every flooded task taken or deferred")
        peak = max(peak, daemon.memory_info().rss)
    # The cap, what libzmq may hold unread (16 messages of 10 MB), and a margin.
    assert peak - before < 64_000_000 + 160_000_000 + 100_000_000, (before, peak)
    wait_for(lambda: worker.status()["mains"] == [], what="the flooding Main dropped")
    wait_for(lambda: daemon.memory_info().rss - before < 100_000_000,
             what="the daemon's memory given back")


def test_a_manifest_of_deep_paths_is_refused_at_once_and_the_worker_answers_on(
        start_worker) -> None:
    worker = start_worker(threads=1, env={"DISTRIB_MAX_MESSAGE_MB": "512"})
    digest = "0" * 64
    deep = [Entry("/".join(["d"] * 2040) + f"/f{i}", 0, False, digest) for i in range(2000)]
    manifest, dist_id = encode_manifest(None, deep)
    with raw_main(worker, "deep") as evil:
        evil.send_multipart(_codec.encode(m.Submit([m.TaskSpec(1, dist_id, 1, None, 0,
                                                               [b"junk"], 0)])))
        replies = []
        while not any(isinstance(r, m.NeedManifest) for r in replies):
            assert evil.poll(30_000), "no NeedManifest within 30 s"
            replies.append(_codec.decode(evil.recv_multipart()))
        evil.send_multipart(_codec.encode(m.Manifest(dist_id, frames=(manifest,))))
        assert worker.status(timeout=30)["name"] == worker.name  # another asker is answered
        outcome = None
        while outcome is None:
            assert evil.poll(30_000), "no outcome within 30 s"
            reply = _codec.decode(evil.recv_multipart())
            if isinstance(reply, m.Results):
                outcome = reply.results[0]
        assert outcome.status is m.Outcome.ENV_ERROR
        assert "more than 128 folders deep" in outcome.info["message"]

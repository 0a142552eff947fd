"""Calls made inside tasks go out as tasks of their own (relayed through the Main), on real
daemons: a tree spreads over the slots, a waiting parent lends its slot, a deadlock is an
error, errors and cancellation follow the tree."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.helpers import PYTHON, Worker, Workspace, ended, finish, wait_for

TREE = """
    import os, sys, time
    import distrib
    from distrib import distributed

    @distributed
    def leaf(x):
        start = time.time()
        time.sleep(0.05)
        return x, start, time.time()

    @distributed
    def node(x, depth):
        if depth == 0:
            return [leaf(x).unwrap()]
        calls = [node(x * 10 + i, depth - 1) if depth > 1 else leaf(x * 10 + i)
                 for i in range(10)]
        if depth == 1:
            return distrib.gather(calls)
        return [r for part in distrib.gather(calls) for r in part]

    if __name__ == "__main__":
        out = node(0, 3).unwrap(timeout=100)  # (pytest's own limit is 120 s)
        print("LEAVES", len(out), sorted(x for x, _, _ in out) == list(range(1000)))
        edges = sorted([(s, 1) for _, s, _ in out] + [(e, -1) for _, _, e in out])
        now = most = 0
        for _, step in edges:
            now += step
            most = max(most, now)
        print("MOST AT ONCE", most)
"""


def test_a_tree_of_calls_spreads_over_the_slots_with_parked_parents_capped(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(threads=4)
    workspace.write("main.py", TREE)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, timeout=110)
    assert out.returncode == 0, (out.stderr[-3000:], worker.status(), worker.log()[-3000:])
    lines = out.stdout.splitlines()
    assert lines[0] == "LEAVES 1000 True", out.stderr[-3000:]
    most = int(lines[1].split()[-1])
    assert 2 <= most <= 4  # leaves ran side by side, never on more than the 4 slots
    status = worker.status()
    assert status["tasks_done"] >= 1111
    assert 0 < status["most_parked"] <= 8  # (--max-parked: twice the threads)


DEADLOCK = """
    import distrib
    from distrib import distributed

    @distributed
    def child():
        return 1

    @distributed
    def parent():
        try:
            return child().unwrap(timeout=10)
        except distrib.NestedDeadlock as exc:
            return f"NestedDeadlock {exc}"

    if __name__ == "__main__":
        print(parent().unwrap(timeout=60))
"""


@pytest.mark.parametrize("mode", ["relayed", "direct"])
def test_a_parent_that_can_neither_park_nor_be_served_gets_nested_deadlock(
        mode: str, workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(threads=1, extra=("--max-parked", "0"))
    workspace.write("main.py", DEADLOCK)
    env = {"DISTRIB_WORKERS": worker.address, "DISTRIB_REDISTRIBUTION": mode}
    out = workspace.run("main.py", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    # (within the parent's 10 s wait: else it would print a WaitTimeout)
    expected = {"relayed": "NestedDeadlock task child#2, called by parent#1 cannot start: "
                           "every slot of worker(s) w0 is held",
                "direct": "NestedDeadlock task child#1.1, called by parent#1 cannot start: "
                          "every slot of worker w0 is held"}[mode]
    assert out.stdout.startswith(expected), out.stdout
    # The worker sent the call back meanwhile (another worker could have run it).
    assert "every slot is held by a task waiting for its calls" in worker.log()
    # With a slot it may lend while it waits, the same call is served.
    other = start_worker(threads=1, name="lends")
    out = workspace.run("main.py", env={**env, "DISTRIB_WORKERS": other.address})
    assert out.stdout.strip() == "1", out.stderr[-3000:]
    assert other.status()["parks"] >= 1  # (it lent its slot while it waited)
    assert other.status()[f"direct_{'here' if mode == 'direct' else 'relayed'}"] == 1


def test_a_worker_started_without_a_name_names_itself_in_nested_deadlock(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    # The name it picks (host:port) is known only once it listens: its calls must carry it.
    worker = start_worker(threads=1, extra=("--max-parked", "0"), named=False)
    name = worker.status()["name"]
    assert name.endswith(":" + worker.address.rsplit(":", 1)[-1]), name
    workspace.write("main.py", DEADLOCK)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address,
                                        "DISTRIB_REDISTRIBUTION": "direct"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("NestedDeadlock task child#1.1, called by parent#1 cannot "
                                 f"start: every slot of worker {name} is held"), out.stdout


ERRORS = """
    import traceback
    from distrib import distributed

    @distributed
    def dig(depth):
        if depth == 0:
            raise ValueError("three levels down")
        return dig(depth - 1).unwrap(timeout=60)

    if __name__ == "__main__":
        try:
            dig(3).unwrap(timeout=120)
        except ValueError as exc:
            print("".join(traceback.format_exception(exc)))
"""


def test_an_error_three_levels_down_reaches_the_main_with_each_remote_traceback(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", ERRORS)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert text.rstrip().endswith("ValueError: three levels down"), text[-2000:]
    assert 'raise ValueError("three levels down")' in text
    # the waits of the three parents, each in its own remote traceback
    assert text.count("return dig(depth - 1).unwrap(timeout=60)") >= 3, text


FANOUT = """
    import os, sys, time
    import distrib
    from distrib import distributed

    @distributed
    def nap(i):
        time.sleep(60)
        return i

    @distributed
    def parent():
        return distrib.gather([nap(i) for i in range(50)])

    if __name__ == "__main__":
        print("PID", os.getpid(), flush=True)
        call = parent()
        sys.stdin.readline()
        print("CANCELLED", call.cancel(), flush=True)
        sys.stdin.readline()
"""


def _idle(worker: Worker) -> bool:
    status = worker.status()
    return status["busy"] == 0 and status["queued"] == 0 and status["parked"] == 0


@contextmanager
def _tree(workspace: Workspace, worker: Worker) -> Iterator[subprocess.Popen[str]]:
    """The FANOUT script running, once its parent has parked and two calls run."""
    workspace.write("main.py", FANOUT)
    with ended(workspace.start("main.py", worker)) as main:
        assert main.stdout is not None and main.stdin is not None
        main.stdout.readline()
        wait_for(lambda: (s := worker.status())["busy"] == 2 and s["parked"] == 1,
                 what="the parent parked (lending its slot), two calls running")
        yield main


def test_cancelling_a_parent_stops_its_calls_everywhere(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(threads=2)
    with _tree(workspace, worker) as main:
        assert main.stdout is not None and main.stdin is not None
        main.stdin.write("\n")
        main.stdin.flush()
        assert main.stdout.readline() == "CANCELLED True\n"
        wait_for(lambda: _idle(worker), what="no call left running, queued or parked")
        main.stdin.write("\n")
        main.stdin.flush()
        main.communicate(timeout=60)


def test_a_killed_main_stops_its_whole_tree(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(threads=2)
    with _tree(workspace, worker) as main:
        main.send_signal(signal.SIGKILL)
        main.communicate(timeout=60)
    wait_for(lambda: _idle(worker), what="the killed Main's tree stopped")


LARGE = """
    import numpy as np
    import distrib
    from distrib import distributed

    @distributed
    def double(a):
        return a * 2

    @distributed
    def add(a, b):
        return a + b

    @distributed
    def parent():
        chunks = [np.full(250_000, float(i)) for i in range(12)]  # 2 MB each, both ways
        total = sum(float(r.sum()) for r in distrib.gather([double(c) for c in chunks]))
        # A Response as an argument inside a task: its wait lends the slot too.
        first = add(double(chunks[1]), 1.0).unwrap(timeout=60)
        return total, float(first[0])

    if __name__ == "__main__":
        print(parent().unwrap(timeout=120))
"""


def test_large_calls_and_response_arguments_inside_a_task_on_one_slot(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(threads=1)
    workspace.write("main.py", LARGE)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == f"({2 * 250_000 * sum(range(12)):.1f}, 3.0)"
    assert worker.status()["parks"] >= 2


WAYS = """
    import asyncio
    import distrib
    from distrib import distributed

    @distributed
    def child(i):
        return i * 10

    @distributed
    def with_as_completed():
        calls = [child(i) for i in range(3)]
        return sorted(r.unwrap() for r in distrib.as_completed(calls, timeout=60))

    @distributed
    def with_await():
        async def run():
            one = await child(1)
            seen = [r.unwrap() async for r in distrib.as_completed([child(2), child(3)],
                                                                  timeout=60)]
            return [one, *sorted(seen)]
        return asyncio.run(run())

    if __name__ == "__main__":
        print(with_as_completed().unwrap(timeout=90), with_await().unwrap(timeout=90))
"""


@pytest.mark.parametrize("mode", ["relayed", "direct"])
def test_as_completed_and_await_inside_a_task_lend_the_slot_too(
        mode: str, workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    worker = start_worker(threads=1)  # (the calls can only run on the slot their parent lends)
    workspace.write("main.py", WAYS)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address,
                                        "DISTRIB_REDISTRIBUTION": mode})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[0, 10, 20] [10, 20, 30]"
    assert worker.status()["parks"] >= 3


TWO = """
    import distrib
    from distrib import distributed

    @distributed
    def child(i):
        return i

    @distributed
    def parent(n):
        return sum(distrib.gather([child(i) for i in range(n)], timeout=90))

    if __name__ == "__main__":
        print(distrib.gather([parent(5) for _ in range(4)], timeout=120))
"""


def test_calls_stuck_on_a_worker_whose_slots_all_wait_run_on_another(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    stuck = start_worker(threads=1, name="stuck", extra=("--max-parked", "0"))
    lends = start_worker(threads=1, name="lends")
    workspace.write("main.py", TWO)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": f"{stuck.address},{lends.address}"},
                        timeout=150)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[10, 10, 10, 10]"  # (however the calls were placed)


DRAINED = """
    import time
    import distrib
    from distrib import distributed

    @distributed
    def child(i):
        time.sleep(0.5)
        return i

    @distributed
    def parent(n):
        return sum(distrib.gather([child(i) for i in range(n)], timeout=90))

    @distributed
    def here():
        return 0

    if __name__ == "__main__":
        seen = set()
        while seen != {"leaving", "staying"}:  # (both serve before the parents are sent)
            done = distrib.as_completed([here() for _ in range(4)], timeout=60)
            seen |= {r.worker for r in done}
        print(distrib.gather([parent(6) for _ in range(6)], timeout=110))
"""


def test_calls_placed_on_a_worker_that_is_drained_go_elsewhere_and_it_leaves(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    leaving = start_worker(threads=2, name="leaving")
    staying = start_worker(threads=2, name="staying")
    workspace.write("main.py", DRAINED)
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_REDISTRIBUTION": "direct",
           "DISTRIB_WORKERS": f"{leaving.address},{staying.address}"}
    with ended(subprocess.Popen([PYTHON, "main.py"], cwd=workspace.root, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)) as main:
        wait_for(lambda: leaving.status()["direct_here"] > 0,
                 what="calls placed on the worker to drain")
        answer = subprocess.run([PYTHON, "-m", "distrib", "worker", "drain", "--cache-dir",
                                 str(leaving.cache_dir)], capture_output=True, text=True,
                                timeout=60)
        assert answer.returncode == 0, answer.stderr
        # Its calls not started go through the Main to the other worker; its running tasks
        # (the parents among them) finish, and it leaves.
        assert leaving.proc.wait(timeout=120) == 0, leaving.log()[-3000:]
        out, err = finish(main)
    assert out.strip() == str([15] * 6), err[-3000:]

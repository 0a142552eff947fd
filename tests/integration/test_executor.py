"""``distrib.Executor`` as ``ProcessPoolExecutor``'s drop-in, on real daemons: its signature
(``max_workers``, ``mp_context``, ``initializer``/``initargs``, ``max_tasks_per_child``),
``running()``, ``cancel_futures``, calls left at interpreter exit; keyword arguments named
``self`` or ``fn``; a task's own ``KeyboardInterrupt``."""

from __future__ import annotations

from tests.helpers import Workspace

KEYWORDS = """
    import sys
    import concurrent.futures as cf
    import distrib
    from distrib import distributed

    def capture(*args, **kwargs):
        return args, kwargs

    @distributed
    def named(x, **kwargs):
        return x, sorted(kwargs)

    if __name__ == "__main__":
        pool = cf.ProcessPoolExecutor(2) if sys.argv[1] == "ppe" else distrib.Executor(2)
        with pool as ex:
            print(ex.submit(capture, 1, self=2, fn=3).result(timeout=60))
            print(ex.submit(dict, self=1).result(timeout=60))
            try:
                ex.submit(fn=capture, arg=1)
            except TypeError:
                print("TypeError")
        if sys.argv[1] == "distrib":
            print(named(1, self=2, fn=3).unwrap(timeout=60))
            print(named.local(1, self=2))
            print(distrib.gather(named.map([1], self=2), timeout=60))
    """


def test_keyword_arguments_named_self_or_fn_reach_the_function(workspace: Workspace,
                                                              start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", KEYWORDS)
    expected = workspace.run("main.py", "ppe")
    assert expected.returncode == 0, expected.stderr[-3000:]
    got = workspace.run("main.py", "distrib", env={"DISTRIB_WORKERS": worker.address})
    assert got.returncode == 0, got.stderr[-3000:]
    assert got.stdout.splitlines() == expected.stdout.splitlines() + [
        "(1, ['fn', 'self'])", "(1, ['self'])", "[(1, ['self'])]"]


INTERRUPTS = """
    import os, signal, sys
    import concurrent.futures as cf
    import distrib

    def interrupted():
        raise KeyboardInterrupt("from the task")

    def signalled():
        os.kill(os.getpid(), signal.SIGINT)

    if __name__ == "__main__":
        pool = (cf.ProcessPoolExecutor(1) if sys.argv[1] == "ppe"
                else distrib.Executor(1, retries=0))
        with pool as ex:
            exc = ex.submit(interrupted).exception(timeout=60)
            print(type(exc).__name__, exc)
            print(ex.submit(pow, 2, 8).result(timeout=60))
            if sys.argv[1] == "distrib":  # (a real SIGINT stops the executor, as before)
                print(type(ex.submit(signalled).exception(timeout=60)).__name__)
    """


def test_a_task_that_raises_keyboard_interrupt_returns_it(workspace: Workspace,
                                                          start_worker) -> None:
    worker = start_worker(threads=1)
    workspace.write("main.py", INTERRUPTS)
    expected = workspace.run("main.py", "ppe")
    assert expected.returncode == 0, expected.stderr[-3000:]
    assert expected.stdout.splitlines() == ["KeyboardInterrupt from the task", "256"]
    got = workspace.run("main.py", "distrib", env={"DISTRIB_WORKERS": worker.address})
    assert got.stdout.splitlines() == expected.stdout.splitlines() + ["WorkerCrashed"], \
        got.stderr[-3000:]
    status = worker.status()
    assert status["executors_crashed"] == 1  # the signalled one only; the task's ran once


SIGNATURE = """
    import multiprocessing, time
    import concurrent.futures as cf
    import distrib

    CALLS = 0
    INITIALIZED = []

    def init(tag):
        INITIALIZED.append(tag)

    def state():
        global CALLS
        CALLS += 1
        return INITIALIZED, CALLS

    def span(pause):
        start = time.monotonic()
        time.sleep(pause)
        return start, time.monotonic()

    def fail_init():
        raise ValueError("no setup")

    if __name__ == "__main__":
        for bad in (0, -1):
            try:
                distrib.Executor(bad)
            except ValueError as exc:
                print("ValueError", exc)
        # Positional, as ProcessPoolExecutor(max_workers, mp_context, initializer, initargs).
        with distrib.Executor(2, multiprocessing.get_context("spawn"), init, ("set",)) as ex:
            print(sorted({tuple(ex.submit(state).result(timeout=60)[0]) for _ in range(4)}))
        with distrib.Executor(1, max_tasks_per_child=1) as ex:
            # (the first may run where other calls ran: it counts them)
            print([ex.submit(state).result(timeout=60)[1] for _ in range(3)][1:])
        with distrib.Executor(2) as ex:
            spans = list(ex.map(span, [0.4] * 6))
        print("at most", max(sum(s < t < e for s, e in spans) for t in
                             [s + 1e-6 for s, _ in spans]))
        ex = distrib.Executor(2, initializer=fail_init)
        try:
            ex.submit(state).result(timeout=60)
        except cf.BrokenExecutor as exc:
            print(type(exc).__name__, "ValueError: no setup" in str(exc))
        try:
            ex.submit(state)
        except cf.BrokenExecutor as exc:
            print("then", type(exc).__name__)
    """


def test_executor_takes_process_pool_executors_arguments(workspace: Workspace,
                                                         start_worker) -> None:
    worker = start_worker(threads=4)
    workspace.write("main.py", SIGNATURE)
    got = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert got.stdout.splitlines() == [
        "ValueError max_workers must be greater than 0",
        "ValueError max_workers must be greater than 0",
        "[('set',)]",   # once in each executor process, before its first call
        "[1, 1]",       # each call after the first in a fresh executor process
        "at most 2",    # of 6 calls on 4 slots
        "InitializerFailed True",
        "then InitializerFailed",
    ], got.stderr[-3000:]


LIFECYCLE = """
    import os, time
    import distrib

    def wait_for_file(path, then):
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        return then

    def late(msg):
        time.sleep(0.5)
        print(msg, flush=True)

    def leaf(x):
        return 2 * x

    def inner(n):  # (its waits lend its slot, as a call's do: else the two would deadlock)
        with distrib.Executor(2) as ex:
            return sum(ex.map(leaf, range(n), timeout=60))

    if __name__ == "__main__":
        go = os.path.join(os.path.dirname(os.path.abspath(".")), "go")  # (out of the workspace)
        ex = distrib.Executor(1)
        first = ex.submit(wait_for_file, go, "first")
        held = [ex.submit(wait_for_file, go, i) for i in range(3)]
        deadline = time.monotonic() + 60
        while not first.running() and time.monotonic() < deadline:
            time.sleep(0.02)
        print("running", first.running(), [f.running() for f in held])
        open(go, "w").close()
        ex.shutdown(wait=True, cancel_futures=True)
        print(first.result(), [f.cancelled() for f in held])
        with distrib.Executor(2) as ex:
            print(list(ex.map(inner, [3, 4, 5], timeout=60)))
        ex = distrib.Executor()
        stuck = ex.submit(wait_for_file, go + "-never", "stuck")
        while not stuck.running() and time.monotonic() < deadline + 60:
            time.sleep(0.02)
        ex.shutdown(wait=True, cancel_running=True)  # (distrib's: it stops running calls too)
        print("stopped", stuck.cancelled())
        distrib.Executor().submit(late, "finished at exit")  # never shut down
    """


def test_running_cancel_futures_and_calls_left_at_interpreter_exit(workspace: Workspace
                                                                   ) -> None:
    # (on the embedded local cluster: its tasks see the file the Main writes)
    workspace.write("main.py", LIFECYCLE)
    got = workspace.run("main.py")
    assert got.returncode == 0, got.stderr[-3000:]
    lines = got.stdout.splitlines()
    assert lines[:4] == ["running True [False, False, False]", "first [True, True, True]",
                         "[6, 12, 20]", "stopped True"], got.stderr[-3000:]
    assert lines[4:] == ["[local] finished at exit"], got.stderr[-3000:]

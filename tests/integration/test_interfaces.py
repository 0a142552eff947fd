"""The standard interfaces on real daemons: ``distrib.Executor`` behaves as
``ProcessPoolExecutor`` does for the same script; ``map`` with keyword arguments;
``async for`` over ``as_completed``."""

from __future__ import annotations

from tests.helpers import Workspace

POOLS = """
    import sys, time
    import concurrent.futures as cf
    import distrib

    def square(x, scale=1):
        return x * x * scale

    def boom(x):
        raise ValueError(f"bad {x}")

    def slow(s):
        time.sleep(s)
        return s

    if __name__ == "__main__":
        # (both at most 2 calls at once: the calls they hold back are those shutdown cancels;
        # with no bound, distrib sends calls ahead to the worker, where they are not
        # cancelled, and whether any was still held varied with the machine's load)
        pool = cf.ProcessPoolExecutor(2) if sys.argv[1] == "ppe" else distrib.Executor(2)
        with pool as ex:
            print(ex.submit(square, 3, scale=2).result(timeout=60))
            try:
                ex.submit(boom, 1).result(timeout=60)
            except ValueError as exc:
                print("ValueError", exc)
            print(list(ex.map(square, range(6), timeout=60)))
            print(list(ex.map(square, range(10), [2] * 10, chunksize=3)))
            try:  # (the pool waits for this call at shutdown: a sleep well past 0.5 s)
                list(ex.map(slow, [2], timeout=0.5))
            except TimeoutError:
                print("map timed out")
            futures = [ex.submit(slow, 0.5) for _ in range(12)]
            ex.shutdown(wait=True, cancel_futures=True)
            print("cancelled some", any(f.cancelled() for f in futures),
                  "all done", all(f.done() for f in futures))
            try:
                ex.submit(square, 1)
            except RuntimeError as exc:
                print("RuntimeError", exc)
    """


def test_executor_behaves_as_process_pool_executor(workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", POOLS)
    expected = workspace.run("main.py", "ppe")
    assert expected.returncode == 0, expected.stderr[-3000:]
    got = workspace.run("main.py", "distrib", env={"DISTRIB_WORKERS": worker.address})
    assert got.stdout.splitlines() == expected.stdout.splitlines(), got.stderr[-3000:]
    assert expected.stdout.splitlines()[0] == "18"  # (it ran what it says)
    assert worker.status()["tasks_done"] >= 6


def test_map_takes_keyword_arguments_and_as_completed_works_with_async_for(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", """
        import asyncio, time
        import distrib
        from distrib import distributed

        @distributed
        def scaled(x, scale=1, pause=0.0):
            time.sleep(pause)
            return x * scale

        async def first_done():
            order = []
            calls = [scaled(1, pause=1.0), scaled(2, pause=0.0)]
            async for response in distrib.as_completed(calls, timeout=60):
                order.append(await response)
            return order

        if __name__ == "__main__":
            print(distrib.gather(scaled.map(range(4), scale=3), timeout=60))
            print(asyncio.run(first_done()))
            async def late():
                async for _ in distrib.as_completed([scaled(1, pause=30)], timeout=0.5):
                    pass
            try:
                asyncio.run(late())
            except distrib.WaitTimeout as exc:
                print("WaitTimeout", exc)
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.stdout.splitlines() == [
        "[0, 3, 6, 9]", "[2, 1]", "WaitTimeout responses did not all finish within 0.5 s"], \
        out.stderr[-3000:]


def test_joblib_parallel_on_the_distrib_backend_gives_the_default_backends_results(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", """
        import sys
        import joblib
        from joblib import Parallel, delayed
        import distrib.joblib

        def cube(x, shift=0):
            return x ** 3 + shift

        if __name__ == "__main__":
            calls = [delayed(cube)(i, shift=i % 7) for i in range(1000)]
            expected = Parallel(n_jobs=2)(calls)
            with joblib.parallel_config(backend="distrib"):
                got = Parallel(n_jobs=-1)(calls)
            print("SAME", got == expected, len(got))
            try:
                with joblib.parallel_config(backend="distrib"):
                    Parallel(n_jobs=2)(delayed(cube)(i, shift="x") for i in range(4))
            except TypeError as exc:
                print("TypeError", "unsupported operand" in str(exc))
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, timeout=300)
    assert out.stdout.splitlines() == ["SAME True 1000", "TypeError True"], out.stderr[-3000:]
    assert worker.status()["tasks_done"] >= 2  # (batches ran there)

"""The joblib backend on real daemons as joblib's own process backends behave: nested loops
lend their slots, ``initializer`` through ``parallel_config``, memmapped outputs and Manager
proxies on the embedded local cluster, and a write into a memmap refused on other workers."""

from __future__ import annotations

import ast
import os
import subprocess
import textwrap

from tests.helpers import PYTHON, Workspace


def test_a_nested_parallel_lends_its_slot_while_the_outer_batches_hold_them_all(
        workspace: Workspace) -> None:
    workspace.write("main.py", """
        from joblib import Parallel, delayed
        import distrib.joblib

        def leaf(i):
            return i * 2

        def inner(k):
            return sum(Parallel(n_jobs=2, backend="distrib")(
                delayed(leaf)(i) for i in range(4))) + k

        if __name__ == "__main__":
            print(Parallel(n_jobs=2, backend="distrib", batch_size=1)(
                delayed(inner)(k) for k in range(4)))
        """)
    out = workspace.run("main.py", env={"DISTRIB_LOCAL_THREADS": "2"}, timeout=120)
    assert out.stdout.splitlines() == ["[12, 13, 14, 15]"], out.stderr[-3000:]
    assert "left" not in out.stderr, out.stderr[-3000:]  # (no session of its own in a task)


def test_the_initializer_given_through_parallel_config_runs_before_the_batches(
        workspace: Workspace) -> None:
    workspace.write("main.py", """
        import os
        import joblib
        from joblib import Parallel, delayed
        import distrib.joblib

        STATE = {}

        def setup(tag):
            STATE["tag"] = tag
            STATE["runs"] = STATE.get("runs", 0) + 1

        def read(i):
            return STATE.get("tag"), STATE.get("runs"), os.getpid()

        if __name__ == "__main__":
            with joblib.parallel_config(backend="distrib", initializer=setup,
                                        initargs=("ready",)):
                got = Parallel(n_jobs=2, batch_size=1)(delayed(read)(i) for i in range(20))
            print(sorted(set(got)))
            got = Parallel(n_jobs=2, batch_size=1, backend="distrib", initializer=setup,
                           initargs=("again",))(delayed(read)(i) for i in range(20))
            print(sorted(set(got)))
        """)
    out = workspace.run("main.py", timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = (ast.literal_eval(line) for line in out.stdout.splitlines())
    assert {(tag, runs) for tag, runs, _ in first} == {("ready", 1)}
    # Once per process and Parallel: twice in a process that served the first one too, once
    # in one that did not (a fresh-clone run on a busy machine had such a third executor).
    served = {pid for _, _, pid in first}
    assert [(tag, runs) for tag, runs, _ in second] == [
        ("again", 2 if pid in served else 1) for _, _, pid in second], (first, second)
    assert served & {pid for _, _, pid in second}  # (the first's executors served it too)


MEMMAP = """
    import sys
    import numpy as np
    from joblib import Parallel, delayed
    import distrib.joblib

    def fill(out, i):
        out[i] = i * i

    if __name__ == "__main__":
        out = np.memmap(sys.argv[1], dtype="float64", shape=(8,), mode="w+")
        try:
            Parallel(n_jobs=2, backend="distrib")(delayed(fill)(out, i) for i in range(8))
            out.flush()
            print(np.fromfile(sys.argv[1], dtype="float64").tolist())
        except Exception as exc:
            print(type(exc).__name__, exc)
    """


def test_writes_into_a_shared_memmap_land_on_the_local_cluster(
        workspace: Workspace, tmp_path) -> None:
    workspace.write("main.py", MEMMAP)
    out = workspace.run("main.py", str(tmp_path / "out.mmap"), timeout=120)
    assert out.stdout.splitlines() == [str([float(i * i) for i in range(8)])], \
        out.stderr[-3000:]


def test_a_write_into_a_memmap_on_another_worker_is_refused_not_lost(
        workspace: Workspace, start_worker, tmp_path) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", MEMMAP)
    out = workspace.run("main.py", str(tmp_path / "out.mmap"),
                        env={"DISTRIB_WORKERS": worker.address}, timeout=120)
    assert out.stdout.startswith(
        "SerializationError a write into an np.memmap of "
        f"{tmp_path / 'out.mmap'} cannot land from a worker that is not on the Main's "
        "machine"), out.stdout + out.stderr[-3000:]


def test_manager_proxies_work_on_the_local_cluster(workspace: Workspace) -> None:
    workspace.write("main.py", """
        import multiprocessing
        from joblib import Parallel, delayed
        import distrib.joblib

        def put(shared, i):
            shared[i] = i + 1

        if __name__ == "__main__":
            with multiprocessing.Manager() as manager:
                shared = manager.dict()
                Parallel(n_jobs=2, backend="distrib")(delayed(put)(shared, i) for i in range(6))
                print(sorted(shared.items()))
        """)
    out = workspace.run("main.py", timeout=120)
    assert out.stdout.splitlines() == [str([(i, i + 1) for i in range(6)])], \
        out.stderr[-3000:]


def test_a_function_of_a_script_given_with_python_c_runs_as_with_loky(
        workspace: Workspace) -> None:
    code = textwrap.dedent("""
        from joblib import Parallel, delayed
        import distrib.joblib

        def square(x):
            return x ** 2

        print(Parallel(n_jobs=2, backend="distrib")(delayed(square)(i) for i in range(5)))
        """)
    out = subprocess.run([PYTHON, "-c", code], cwd=workspace.root, capture_output=True,
                         text=True, timeout=120, env={
                             **os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
                             "DISTRIB_LOCAL_THREADS": "2"})
    assert out.stdout.splitlines() == ["[0, 1, 4, 9, 16]"], out.stderr[-3000:]


def test_a_failed_loop_stops_its_running_batches_so_the_next_loop_is_not_held_behind_them(
        workspace: Workspace) -> None:
    workspace.write("main.py", """
        import time
        from joblib import Parallel, delayed
        import distrib.joblib

        def slow_or_fail(i):
            if i == 0:
                raise ValueError("boom")
            time.sleep(600)  # (past the run's deadline: this loop must not wait for these)

        if __name__ == "__main__":
            with Parallel(n_jobs=2, backend="distrib", batch_size=1) as parallel:
                try:
                    parallel(delayed(slow_or_fail)(i) for i in range(4))
                except ValueError as exc:
                    print("ValueError", exc)
                print(parallel(delayed(abs)(-i) for i in range(4)))
        """)
    out = workspace.run("main.py", timeout=120)
    assert out.stdout.splitlines() == ["ValueError boom", "[0, 1, 2, 3]"], out.stderr[-3000:]

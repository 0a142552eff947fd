"""The session as users start it without a main script (``python -c``, stdin, pytest), and in
processes forked from a Main: what is shipped, how functions travel, whose failure is whose."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

from tests.helpers import PYTHON, Worker, Workspace


def _env(worker: Worker, cache_dir: Path) -> dict[str, str]:
    return {**os.environ, "DISTRIB_CACHE_DIR": str(cache_dir), "DISTRIB_WORKERS": worker.address}


def _run(args: list[str], cwd: Path, env: dict[str, str], stdin: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                          timeout=180)


MAIN_DEFINITIONS = textwrap.dedent("""\
    import distrib

    def double(x):
        return 2 * x

    class Box:
        def __init__(self, value):
            self.value = value

    def unbox(box):
        return Box(box.value + 1)

    with distrib.Executor() as ex:
        print("RESULT", ex.submit(double, 21).result(timeout=90),
              ex.submit(unbox, Box(1)).result(timeout=90).value,
              list(ex.map(double, [1, 2])))
""")


def test_executor_runs_functions_and_classes_of_main_without_a_main_script(
        tmp_path: Path, start_worker, cache_dir: Path) -> None:
    # Functions of __main__ given to Executor.submit, and instances of its classes, pickled by
    # name, failed on workers: "Can't get attribute 'double' on <module ...>".
    worker = start_worker(threads=2)
    env = _env(worker, cache_dir)
    for args, stdin in (([PYTHON, "-c", MAIN_DEFINITIONS], None), ([PYTHON, "-"],
                                                                   MAIN_DEFINITIONS)):
        out = _run(args, tmp_path, env, stdin)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["RESULT 42 2 [2, 4]"], out.stderr


def test_a_module_workers_cannot_import_fails_its_call_alone(
        tmp_path: Path, start_worker, cache_dir: Path) -> None:
    # A local module, neither installed nor shipped: the call that needs it fails naming it;
    # the worker was marked unable, and every later call of the session failed too.
    worker = start_worker(threads=2)
    (tmp_path / "local_mod.py").write_text(
        "class Counter:\n    def bump(self, x):\n        return x + 1\n")
    code = textwrap.dedent("""\
        import distrib, local_mod

        def needs_it():
            import local_mod
            return 1

        with distrib.Executor() as ex:
            try:
                ex.submit(needs_it).result(timeout=90)
            except distrib.DependencyError as exc:
                print("FAILED", exc)
            print("LATER", ex.submit(pow, 2, 8).result(timeout=90),
                  ex.submit(local_mod.Counter().bump, 1).result(timeout=90))
    """)
    out = _run([PYTHON, "-c", code], tmp_path, _env(worker, cache_dir))
    assert out.returncode == 0, out.stderr
    failed, later = out.stdout.splitlines()
    assert failed.startswith("FAILED task needs_it#1"), out.stdout
    assert f"needs module local_mod ({tmp_path / 'local_mod.py'}), which workers cannot " \
           "import: it is not installed and no workspace is shipped" in failed
    # The module's bound method, an argument, travels by value: it runs.
    assert later == "LATER 256 2", out.stderr
    assert "gets no more of this Main's tasks" not in out.stderr


def test_a_forked_child_starts_its_own_session(workspace: Workspace, start_worker) -> None:
    # A fork pool's processes inherited the parent's session, whose I/O thread they lack:
    # their calls never finished.
    worker = start_worker(threads=2)
    workspace.write("main.py", """\
        import multiprocessing, os
        import distrib

        @distrib.distributed
        def square(x):
            return x * x

        def in_child(x):
            return square(x).unwrap(timeout=90)

        if __name__ == "__main__":
            print("PARENT", square(3).unwrap(timeout=90), flush=True)
            with multiprocessing.get_context("fork").Pool(2) as pool:
                print("POOL", pool.map_async(in_child, [1, 2, 3]).get(timeout=120), flush=True)
            pid = os.fork()
            if pid == 0:
                code = 0 if square(4).unwrap(timeout=90) == 16 else 1
                distrib.shutdown()
                os._exit(code)
            print("FORK", os.waitpid(pid, 0)[1], flush=True)
            print("PARENT", square(5).unwrap(timeout=90), flush=True)
    """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, timeout=240)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["PARENT 9", "POOL [1, 4, 9]", "FORK 0", "PARENT 25"], \
        out.stderr


def test_under_pytest_the_test_project_is_the_workspace(
        tmp_path: Path, start_worker, cache_dir: Path) -> None:
    # Without a main script nothing was shipped: a test module's functions given to an
    # Executor failed on workers, and the project's files were not there.
    worker = start_worker(threads=2)
    project = tmp_path / "proj"
    (project / "tests").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'proj'\nversion = '0'\n")
    (project / "data.txt").write_text("shipped")
    (project / "tests" / "helpers_here.py").write_text("def inc(x):\n    return x + 1\n")
    (project / "tests" / "test_user.py").write_text(textwrap.dedent("""\
        import distrib
        from helpers_here import inc

        @distrib.distributed
        def read_data():
            with open("data.txt") as f:
                return f.read()

        def plus_one(x):
            return inc(x)

        def test_on_workers():
            assert read_data().unwrap(timeout=90) == "shipped"
            with distrib.Executor() as ex:
                assert ex.submit(plus_one, 1).result(timeout=90) == 2
    """))
    out = _run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
                "log_level=WARNING", "-rA", "tests"], project, _env(worker, cache_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
    assert f"under pytest with no main script: the test project {project.resolve()} is the " \
           "workspace shipped to workers" in out.stdout

"""The standard library's ``concurrent.futures`` executor tests, generated for
``distrib.Executor`` as the standard library generates them for its pools (its mixins, through
its own ``create_executor_tests``), beside ``ProcessPoolExecutor`` (fork, 3.11's default).

    .venv/bin/python -m bench.compat.stdlib_futures [--tests DIR] [unittest arguments]

DIR is the ``test_concurrent_futures`` package of a Python 3.13 (default: pyenv's 3.13.0): it
is copied into a scratch workspace, with what 3.11's ``test.support`` lacks added to its
``__init__``, so that workers import its functions by name as they would a project's. Calls
run on the embedded local cluster. Prints, per pool, how many tests pass, and which do not.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

DEFAULT = Path("/root/.pyenv/versions/3.13.0/lib/python3.13/test/test_concurrent_futures")
PACKAGE = "stdlib_cf_tests"

# What the 3.13 tests use that 3.11's test.support lacks (imported on workers too).
SHIM = '''
from test import support as _support
_support.Py_GIL_DISABLED = getattr(_support, "Py_GIL_DISABLED", False)
_check, _skip_if = _support.check_sanitizer, _support.skip_if_sanitizer
_support.check_sanitizer = lambda *, thread=False, **kw: any(kw.values()) and _check(**kw)
_support.skip_if_sanitizer = lambda reason=None, *, thread=False, **kw: (
    _skip_if(reason, **kw) if any(kw.values()) else (lambda test: test))
'''

RUNNER = '''
import os, subprocess, sys, unittest
import {package}
from {package} import executor, test_as_completed, test_init, test_shutdown, test_wait, util
import distrib


class DistribMixin(util.ExecutorMixin):
    executor_type = distrib.Executor


def python_ok(*args, **env_vars):
    """script_helper.assert_python_ok for the scripts that name the pool: they import it
    from distrib, and this package by its name here."""
    script = args[-1].replace("test.test_concurrent_futures", "{package}")
    script = script.replace("from concurrent.futures import Executor",
                            "from distrib import Executor")
    proc = subprocess.run([sys.executable, *args[:-1], script], capture_output=True,
                          env={{**os.environ, **env_vars}}, timeout=300)
    if proc.returncode:
        raise AssertionError(f"exit {{proc.returncode}}: {{proc.stderr.decode()[-2000:]}}")
    return proc.returncode, proc.stdout, proc.stderr


test_shutdown.assert_python_ok = python_ok
POOLS = (util.ProcessPoolForkMixin, DistribMixin)
for mixin in (executor.ExecutorTest, test_wait.WaitTests, test_as_completed.AsCompletedTests,
              test_init.InitializerMixin, test_init.FailingInitializerMixin,
              test_shutdown.ExecutorShutdownTest):
    util.create_executor_tests(globals(), mixin, executor_mixins=POOLS)

if __name__ == "__main__":
    program = unittest.main(exit=False, verbosity=1)
    result = program.result
    bad = {{t.id(): why for t, why in
            [*((t, "FAIL") for t, _ in result.failures), *((t, "ERROR") for t, _ in result.errors),
             *((t, "skipped") for t, _ in result.skipped)]}}
    names = [t.id() for t in unittest.defaultTestLoader.loadTestsFromModule(
        sys.modules["__main__"])._tests for t in t]
    for prefix in ("ProcessPoolFork", "Distrib"):
        mine = [n for n in names if n.split(".")[1].startswith(prefix)]
        passed = [n for n in mine if n not in bad]
        print(f"{{prefix}}: {{len(passed)}} of {{len(mine)}} pass")
        for name in mine:
            if name in bad:
                print(f"    {{bad[name]}}: {{name.split('.', 1)[1]}}")
'''


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=Path, default=DEFAULT,
                        help="the test_concurrent_futures package of a Python 3.13")
    args, rest = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="stdlib-futures-") as scratch:
        workspace = Path(scratch)
        package = workspace / PACKAGE
        shutil.copytree(args.tests, package, ignore=shutil.ignore_patterns("__pycache__"))
        init = package / "__init__.py"
        init.write_text(SHIM + init.read_text())
        (workspace / "main.py").write_text(textwrap.dedent(RUNNER).format(package=PACKAGE))
        return subprocess.run([sys.executable, "main.py", *rest], cwd=workspace).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

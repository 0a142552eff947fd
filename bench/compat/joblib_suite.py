"""joblib's own backend tests (``joblib/test/test_parallel.py``, shipped inside joblib's
package) with "distrib" added to its process backends, and loky and distrib compared.

    .venv/bin/python -m bench.compat.joblib_suite [-k EXPR] [--keep] [-- PYTEST_ARGS...]

The test module is copied into a fresh folder with ``PROCESS_BACKENDS`` extended by
"distrib"; that folder is distrib's workspace (``DISTRIB_WORKSPACE``), so the workers import
the module's functions as the suite's own processes do, on the embedded local cluster with 2
slots. Every Python process of the run, the suite's own subprocesses included, registers the
backend as soon as it imports joblib (a ``sitecustomize`` on ``PYTHONPATH``). Prints the
pass counts of the tests parametrized with loky and with distrib, and each test that passes
with loky but not with distrib, with its failure's last line.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import joblib

SITECUSTOMIZE = '''
import importlib.abc, importlib.util, sys

class _AfterJoblib(importlib.abc.MetaPathFinder):
    """Registers distrib's backend once the joblib package has been imported."""

    def find_spec(self, name, path, target=None):
        if name != "joblib":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            import distrib.joblib  # (registers "distrib")

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _AfterJoblib())
'''

BACKENDS = ("loky", "distrib")


def prepare(folder: Path) -> Path:
    """The suite's module, with distrib among its process backends, and the site hook."""
    source = Path(joblib.__file__).parent / "test" / "test_parallel.py"
    text = source.read_text()
    old = 'PROCESS_BACKENDS = ["multiprocessing", "loky"]'
    if old not in text:
        raise SystemExit(f"{source}: no line {old!r} (another joblib version?)")
    (folder / "test_parallel.py").write_text(
        text.replace(old, 'PROCESS_BACKENDS = ["multiprocessing", "loky", "distrib"]'))
    (folder / "pytest.ini").write_text("[pytest]\n")
    site = folder / "_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return site


def outcomes(report: Path) -> dict[str, tuple[str, str]]:
    """Each test's outcome (passed, failure, error, skipped) and its failure's last line."""
    got: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name, outcome, why = case.get("name", ""), "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
                why = (child.get("message") or child.text or "").strip().splitlines()
                why = why[-1][:160] if why else ""
                break
        got[name] = (outcome, why)
    return got


def per_backend(results: dict[str, tuple[str, str]]) -> dict[str, dict[str, tuple[str, str]]]:
    """The tests parametrized with each backend, by name with that backend replaced."""
    by: dict[str, dict[str, tuple[str, str]]] = {b: {} for b in BACKENDS}
    for name, outcome in results.items():
        params = re.search(r"\[(.*)\]$", name)
        if params is None:
            continue
        tokens = re.split(r"(-)", params.group(1))
        for backend in BACKENDS:
            if backend in tokens:
                key = name[:params.start()] + "[" + "".join(
                    "{B}" if t == backend else t for t in tokens) + "]"
                by[backend][key] = outcome
    return by


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-k", default="loky or distrib", help="pytest's -k (default: %(default)s)")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per test")
    parser.add_argument("--keep", action="store_true", help="keep the folder of the run")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="joblib-suite-"))
    site = prepare(folder)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
               [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "DISTRIB_WORKSPACE": str(folder), "DISTRIB_LOCAL_THREADS": "2",
           "DISTRIB_CACHE_DIR": str(folder / "_cache")}
    report = folder / "report.xml"
    subprocess.run([sys.executable, "-m", "pytest", "test_parallel.py", "-q",
                    "-p", "no:cacheprovider", "--timeout", str(args.timeout), "-k", args.k,
                    f"--junitxml={report}", *args.pytest_args], cwd=folder, env=env)
    by = per_backend(outcomes(report))
    print(f"\njoblib {joblib.__version__}: tests parametrized with each backend")
    for backend in BACKENDS:
        counts = Counter(o for o, _ in by[backend].values())
        print(f"  {backend:8} {counts['passed']} passed of {len(by[backend])} "
              f"({counts['skipped']} skipped, {counts['failure'] + counts['error']} failed)")
    both = by["loky"].keys() & by["distrib"].keys()
    print(f"  the {len(both)} run with both: loky passes "
          f"{sum(by['loky'][k][0] == 'passed' for k in both)}, distrib "
          f"{sum(by['distrib'][k][0] == 'passed' for k in both)}")
    print("\npassed with loky, not with distrib:")
    for key, (outcome, _) in sorted(by["loky"].items()):
        theirs = by["distrib"].get(key)
        if outcome == "passed" and theirs is not None and theirs[0] != "passed":
            print(f"  {key.replace('{B}', 'distrib')}: {theirs[0]}: {theirs[1]}")
    print(f"\n(run in {folder})" if args.keep else "")
    if not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

"""A script's first run with a running worker: the CPU of the whole Main process.

The first run of a script in a fresh cache (a new project, a new virtualenv, and every test
of the suite, each of which has a cache of its own) imports distrib, scans the workspace,
describes its environment for the workers, connects, makes ten calls and leaves. Nearly all of
it is that process's own start, which this measures: user + system CPU of the process and
what it waited for (``os.times``), on a busy machine where its wall time is not steady. One
worker daemon serves every run; each run has a fresh cache. With several source trees
(``--src``, each a folder holding ``distrib/``), runs alternate between them, so a busy
machine weighs on each alike; the medians are printed.

    bench/.venv/bin/python -m bench.main_start [--runs 9] [--src A/src --src B/src]
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

from bench.daemon_start import arguments

SCRIPT = """\
from distrib import distributed


@distributed
def inc(x):
    return x + 1


if __name__ == "__main__":
    print(sum(inc(i).unwrap() for i in range(10)))
"""


def _env(src: str | None, **extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    if src:
        env["PYTHONPATH"] = src
    return env


def main() -> None:
    trees, count = arguments(__doc__, 9)
    seen: dict[str | None, list[float]] = {t: [] for t in trees}
    folder = tempfile.mkdtemp(prefix="main-start-")
    project = os.path.join(folder, "project")
    os.mkdir(project)
    with open(os.path.join(project, "main.py"), "w") as f:
        f.write(SCRIPT)
    worker = subprocess.Popen(
        [sys.executable, "-m", "distrib", "worker", "--listen", "127.0.0.1:0", "--threads", "2",
         "--cache-dir", os.path.join(folder, "worker")], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=_env(trees[0]), cwd=folder)
    try:
        assert worker.stdout is not None
        ready = re.search(r"ready on (\S+)", worker.stdout.readline())
        if ready is None:
            raise SystemExit("the worker did not say it was ready")
        for run in range(count):
            for i, tree in enumerate(trees):
                before = os.times()
                subprocess.run([sys.executable, "main.py"], cwd=project, check=True,
                               capture_output=True, timeout=120, env=_env(
                                   tree, DISTRIB_WORKERS=ready.group(1),
                                   DISTRIB_CACHE_DIR=os.path.join(folder, f"main-{i}-{run}")))
                after = os.times()
                seen[tree].append(after.children_user - before.children_user
                                  + after.children_system - before.children_system)
    finally:
        worker.terminate()
        worker.wait()
        shutil.rmtree(folder, ignore_errors=True)
    for tree, cpus in seen.items():
        print(f"{tree or 'installed'}: CPU of a Main's first run median "
              f"{statistics.median(cpus) * 1000:.0f} ms (min {min(cpus) * 1000:.0f}), "
              f"{len(cpus)} runs")


if __name__ == "__main__":
    main()

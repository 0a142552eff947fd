"""What a Main's packages cost when the worker lacks them: distrib beside Ray's runtime_env.

    bench/run is not needed; after it has set up bench/.venv:
    bench/.venv/bin/python -m bench.environments [--package numpy==2.4.6] [--reps 3]

The worker's (and Ray cluster's) own environment is bench/.venv-lean (made here, once: the
project, Ray and virtualenv, as bench/.venv but without the package). Each
peer gets the same wheel, from one local folder (no index), and each repetition starts cold:
a fresh worker cache (distrib: its uv cache too) or a fresh Ray cluster. Three driver
processes run in turn against it, and their wall times are measured:
- cold: the first that uses the package: the environment is built;
- cached: the same script again: the environment is reused;
- plain: a script that uses no package, against the same worker or cluster.
``cached - plain`` is what a cached environment adds to a run. The first call's latency
(from the call to its result, inside the driver) is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from uv import find_uv_bin

HERE = Path(__file__).resolve().parent
WHEELS = HERE / ".venv" / "env-wheels"
LEAN = HERE / ".venv-lean" / "bin" / "python"

DISTRIB_MAIN = """\
import sys, time
t0 = time.perf_counter()
{imports}
from distrib import distributed

@distributed
def work(n):
    {body}

if __name__ == "__main__":
    t1 = time.perf_counter()
    value = work(3).unwrap()
    print("FIRST_CALL", time.perf_counter() - t1, value)
"""

RAY_DRIVER = """\
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
env = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None

@ray.remote
def work(n):
    {body}

t1 = time.perf_counter()
call = work.options(runtime_env=env) if env else work
value = ray.get(call.remote(3))
print("FIRST_CALL", time.perf_counter() - t1, value)
"""

USE = "import numpy\n    return float(numpy.arange(n).sum())"
PLAIN = "return float(sum(range(n)))"


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 900) -> tuple[float, float]:
    """Wall time of a driver process, and the first-call latency it printed."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, text=True,
                          capture_output=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("FIRST_CALL"))
    return wall, float(line.split()[1])


def fetch_wheel(package: str) -> None:
    WHEELS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary", ":all:", "-d", str(WHEELS), package], check=True)


def lean_venv() -> Path:
    """The worker's and Ray cluster's environment: what bench/.venv has but the package."""
    if not LEAN.exists():
        uv = find_uv_bin()
        subprocess.run([uv, "venv", "-q", "--python", sys.executable,
                        str(LEAN.parent.parent)], check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(LEAN), "-e",
                        str(HERE.parent), "ray", "virtualenv", "pip"], check=True)
    return LEAN


def main_venv(root: Path, package: str) -> Path:
    """A Main's virtualenv: the lean venv's packages behind its own, which add ``package``."""
    uv = find_uv_bin()
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(root)], check=True)
    site = next(root.glob("lib/python*/site-packages"))
    base = next(LEAN.parent.parent.glob("lib/python*/site-packages"))
    (site / "zz_bench_base.pth").write_text(f"import site; site.addsitedir({str(base)!r})\n")
    subprocess.run([uv, "pip", "install", "-q", "--python", str(root / "bin" / "python"),
                    "--no-index", "--find-links", str(WHEELS), package], check=True)
    return root / "bin" / "python"


def distrib_rep(tmp: Path, python: Path) -> dict[str, tuple[float, float]]:
    work = tmp / "distrib"
    work.mkdir()
    (work / "uses.py").write_text(DISTRIB_MAIN.format(imports="import numpy", body=USE))
    plain = work / "plain"
    plain.mkdir()
    (plain / "plain.py").write_text(DISTRIB_MAIN.format(imports="", body=PLAIN))
    worker = subprocess.Popen(
        [str(LEAN), "-m", "distrib", "worker", "--listen", "127.0.0.1:0", "--threads", "2",
         "--cache-dir", str(tmp / "worker-cache"), "--no-index", "--find-links", str(WHEELS)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert worker.stdout is not None
        address = worker.stdout.readline().split(" ready on ")[1].split()[0]
        env = {"DISTRIB_WORKERS": address, "DISTRIB_CACHE_DIR": str(tmp / "main-cache")}
        cold = run([str(python), "uses.py"], work, env)
        cached = run([str(python), "uses.py"], work, env)
        base = run([str(python), "plain.py"], plain, env)
    finally:
        worker.terminate()
        worker.wait(60)
    return {"cold": cold, "cached": cached, "plain": base}


def ray_rep(tmp: Path, package: str, kind: str) -> dict[str, tuple[float, float]]:
    ray = str(LEAN.parent / "ray")
    temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # (Ray's socket paths must be short)
    subprocess.run([ray, "start", "--head", "--num-cpus", "2", "--temp-dir", str(temp),
                    "--include-dashboard", "false", "--disable-usage-stats"], check=True,
                   capture_output=True)
    try:
        (tmp / "uses.py").write_text(RAY_DRIVER.format(body=USE))
        (tmp / "plain.py").write_text(RAY_DRIVER.format(body=PLAIN))
        options = ["--no-index", "--find-links", str(WHEELS)]
        if kind == "pip":
            env: dict[str, object] = {"pip": {"packages": [package],
                                              "pip_install_options": [*options,
                                                                      "--no-cache-dir"]}}
        else:
            env = {"uv": {"packages": [package], "uv_pip_install_options": options}}
        spec = json.dumps(env)
        cold = run([str(LEAN), "uses.py", "auto", spec], tmp)
        cached = run([str(LEAN), "uses.py", "auto", spec], tmp)
        base = run([str(LEAN), "plain.py", "auto"], tmp)
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)
    return {"cold": cold, "cached": cached, "plain": base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="numpy==2.4.6")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default="distrib,ray-pip,ray-uv")
    args = parser.parse_args()
    fetch_wheel(args.package)
    lean_venv()
    rows: dict[str, list[dict[str, tuple[float, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        python = main_venv(tmp / "main-venv", args.package)
        for rep in range(args.reps):
            for peer in args.only.split(","):
                folder = tmp / f"{peer}-{rep}"
                folder.mkdir()
                if peer == "distrib":
                    result = distrib_rep(folder, python)
                else:
                    result = ray_rep(folder, args.package, peer.removeprefix("ray-"))
                rows.setdefault(peer, []).append(result)
                print(peer, rep, json.dumps(result), file=sys.stderr)
    command = "bench/.venv/bin/python -m bench.environments " + " ".join(sys.argv[1:])
    print(f"# Environments: {args.package} on a worker that lacks it\n")
    print(f"`{command}` — {platform.node()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}; median of "
          f"{args.reps} cold starts.\n")
    print("| peer | cold run (s) | cold first call (s) | cached run (s) | cached first call "
          "(s) | plain run (s) | cached - plain (ms) |")
    print("|---|---|---|---|---|---|---|")
    for peer, reps in rows.items():
        med = {k: (statistics.median(r[k][0] for r in reps),
                   statistics.median(r[k][1] for r in reps)) for k in ("cold", "cached", "plain")}
        extra = statistics.median(r["cached"][0] - r["plain"][0] for r in reps) * 1e3
        print(f"| {peer} | {med['cold'][0]:.2f} | {med['cold'][1]:.2f} | {med['cached'][0]:.2f} "
              f"| {med['cached'][1]:.3f} | {med['plain'][0]:.2f} | {extra:+.0f} |")


if __name__ == "__main__":
    main()

"""The benchmark's command line: plan the measurements, run each in a fresh subprocess, report.

    python -m bench [--reps N] [--only W1,W2] [--frameworks distrib,ray] [--quick]
                    [--baseline REV]

(``bench/run`` sets up the venv and calls this.) Each measurement is one subprocess
(``bench.measure``) in a process group of its own with its own TMPDIR and distrib cache, so
clusters do not interfere, and a peer that crashes, hangs or leaves processes behind costs
only its own measurement. Results: ``bench/results/<date>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.frameworks import ASKED_ONLY, MODULES
from bench.measure import RESULT_TAG, VERSION_TAG
from bench.workloads import WARM_SLEEP, WORKLOADS, Workload

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
KILL_GRACE_S = 3.0  # after SIGUSR1 on a timeout, time for the stacks to be written
EXIT_GRACE_S = 5.0  # after a measurement exits, time for its cluster's processes to follow
ERROR_CHARS = 6000  # how much of a failed measurement's stderr the report keeps


@dataclass(frozen=True)
class Options:
    """What the command line asked for."""

    reps: int
    workloads: tuple[Workload, ...]
    frameworks: tuple[str, ...]
    quick: bool
    timeout_s: float | None
    baseline: str | None = None  # a git revision whose distrib runs beside this one


def parse(argv: list[str]) -> Options:
    """Parse and check the command line."""
    groups = sorted({w.group for w in WORKLOADS.values()})
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--only", default=",".join(groups),
                        help=f"workloads to run, comma-separated (default {','.join(groups)})")
    usual = ",".join(m for m in MODULES if m not in ASKED_ONLY)
    parser.add_argument("--frameworks", default=usual,
                        help=f"frameworks to run, comma-separated (default {usual}; also "
                             f"{', '.join(ASKED_ONLY)})")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: call counts scaled down 10x")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="limit of one measurement (default: per workload, 400-1200 s)")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also measure distrib as of git revision REV (e.g. HEAD~1), "
                             "as the framework distrib@REV, in the same run")
    args = parser.parse_args(argv)
    only = [g.strip().upper() for g in args.only.split(",") if g.strip()]
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    ids = {w.id.upper() for w in WORKLOADS.values()}  # (a group, or one workload of it: W5b)
    if unknown := [g for g in only if g not in groups and g not in ids]:
        parser.error(f"--only: unknown workload(s) {', '.join(unknown)}; known: {', '.join(groups)}")
    if unknown := [f for f in frameworks if f not in MODULES]:
        parser.error(f"--frameworks: unknown {', '.join(unknown)}; known: {', '.join(MODULES)}")
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    return Options(
        reps=args.reps,
        workloads=tuple(w for w in WORKLOADS.values()
                        if w.group in only or w.id.upper() in only),
        frameworks=tuple(f for f in MODULES if f in frameworks),  # the report's order
        quick=args.quick,
        timeout_s=args.timeout,
        baseline=args.baseline,
    )


# --- running measurements ------------------------------------------------------------------------


def distrib_source() -> str:
    """A short hash of the distrib source that measurements import right now.

    distrib is installed editable, so its source can change while a run goes on; the hash,
    taken before every distrib measurement, shows which measurements ran which code.
    """
    spec = importlib.util.find_spec("distrib")
    assert spec is not None and spec.origin is not None, "distrib is not installed"
    package = Path(spec.origin).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def git_commit() -> str:
    """The repository's commit, with ``-dirty`` if distrib's source differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                              text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--", "src") else "")


def end_group(pgid: int, grace_s: float) -> int:
    """Give what is left of process group ``pgid`` ``grace_s`` to exit, then SIGKILL it.

    Returns how many processes had to be killed.
    """
    left = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except (psutil.Error, ProcessLookupError):
            continue
    _, alive = psutil.wait_procs(left, timeout=grace_s)  # a cluster may still be exiting
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
    return len(alive)


def run_one(workload: Workload, name: str, params: dict[str, Any], timeout_s: float,
            folder: Path, baseline_src: Path | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh subprocess; return its record (ok or failed).
    ``name`` ``distrib@REV`` runs distrib from ``baseline_src`` (that revision's ``src``)."""
    folder.mkdir()
    env = dict(os.environ)
    env["TMPDIR"] = str(folder)  # Ray's session files, distrib's sockets, Dask's scratch space
    env["DISTRIB_CACHE_DIR"] = str(folder / "distrib-cache")
    # Every framework's workers import the task functions as ``bench.workloads``; a baseline's
    # source goes first, so its Main, workers and executors all import that distrib.
    first = [str(baseline_src)] if name.startswith("distrib@") and baseline_src else []
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*first, str(REPO),
                                                      env.get("PYTHONPATH")]))
    record: dict[str, Any] = {"workload": workload.id, "framework": name, "ok": False}
    if name == "distrib":
        record["distrib_source"] = distrib_source()
    adapter = name.partition("@")[0]
    with open(folder / "stdout", "w+b") as out, open(folder / "stderr", "w+b") as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.measure", workload.id, adapter, json.dumps(params)],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True,  # its own process group: everything it starts can be ended
        )
        timed_out = False
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.send_signal(signal.SIGUSR1)  # bench.measure dumps every thread's stack
            try:
                proc.wait(KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        finally:
            record["wall_s"] = time.monotonic() - started
            left = end_group(proc.pid, 0 if timed_out else EXIT_GRACE_S)
            proc.wait()
        if left and not timed_out:
            record["left_running"] = left  # a framework that does not clean up after itself
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    for line in stdout.splitlines():
        if line.startswith(VERSION_TAG):
            record["version"] = line[len(VERSION_TAG):]
        elif line.startswith(RESULT_TAG):
            record["metrics"] = json.loads(line[len(RESULT_TAG):])
    if timed_out:
        record["error"] = f"timed out after {timeout_s:.0f} s; its threads then:\n"
    elif proc.returncode != 0:
        record["error"] = f"exited with code {proc.returncode}:\n"
    elif "metrics" not in record:
        record["error"] = "exited without printing a result:\n"
    else:
        record["ok"] = True
    if not record["ok"]:
        record["error"] += stderr[-ERROR_CHARS:].strip() or "(nothing on stderr)"
    return record


def describe(workload: Workload, record: dict[str, Any]) -> str:
    """One progress line about a finished measurement."""
    if not record["ok"]:
        return "FAILED: " + str(record["error"]).splitlines()[0]
    metric = workload.metrics[0]
    value = record["metrics"][metric.key]
    return f"{fmt(value)} {metric.unit}".strip() + f" ({record['wall_s']:.1f} s)"


def run(options: Options) -> list[dict[str, Any]]:
    """Every measurement: repetitions outermost, frameworks alternating within each workload."""
    records: list[dict[str, Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))  # short: Ray's socket paths must fit
    baseline_src = checkout(options.baseline, scratch) if options.baseline else None
    try:
        for rep in range(options.reps):
            for workload in options.workloads:
                names = [f for f in options.frameworks
                         if workload.frameworks is None or f in workload.frameworks]
                if baseline_src and "distrib" in names:  # (right after it in the report)
                    names.insert(names.index("distrib") + 1, f"distrib@{options.baseline}")
                # Rotate who goes first, so no framework always runs right after another's
                # cluster has shut down.
                shift = rep % len(names) if names else 0
                for name in names[shift:] + names[:shift]:
                    params = workload.quick if options.quick else workload.params
                    timeout_s = options.timeout_s or workload.timeout_s
                    print(f"[rep {rep + 1}/{options.reps}] {workload.id} {name} ...",
                          end=" ", file=sys.stderr, flush=True)
                    record = run_one(workload, name, params, timeout_s,
                                     scratch / str(len(records)), baseline_src)
                    record["rep"] = rep + 1
                    records.append(record)
                    print(describe(workload, record), file=sys.stderr, flush=True)
    finally:
        if baseline_src is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(baseline_src.parent)], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return records


def baseline_commit(revision: str) -> str:
    """The short commit ``revision`` names."""
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", revision],
                          capture_output=True, text=True).stdout.strip() or "unknown"


def checkout(revision: str, scratch: Path) -> Path:
    """A detached worktree of ``revision`` in ``scratch``, its modules compiled; its ``src``."""
    tree = scratch / "baseline"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree),
                    revision], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "src")],
                   stdout=subprocess.DEVNULL)
    return tree / "src"


# --- the report ------------------------------------------------------------------------------------


def fmt(value: float) -> str:
    """A number with as many digits as a benchmark deserves."""
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": cpu,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def summarize(options: Options, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per workload, metric and framework: median, min, max and failures over repetitions."""
    summary: dict[str, Any] = {}
    for workload in options.workloads:
        mine = [r for r in records if r["workload"] == workload.id]
        per_metric: dict[str, Any] = {}
        for metric in workload.metrics:
            per_fw: dict[str, Any] = {}
            for name in dict.fromkeys(r["framework"] for r in mine):
                runs = [r for r in mine if r["framework"] == name]
                values = [r["metrics"][metric.key] for r in runs if r["ok"]]
                per_fw[name] = {
                    "median": statistics.median(values) if values else None,
                    "min": min(values, default=None),
                    "max": max(values, default=None),
                    "runs": len(runs),
                    "failed": len(runs) - len(values),
                    "values": values,
                }
            per_metric[metric.key] = per_fw
        summary[workload.id] = per_metric
    return summary


def title(workload: Workload, params: dict[str, Any]) -> str:
    """A workload's heading with its actual counts filled in."""
    return workload.title.format(**params)


def table(workload: Workload, summary: dict[str, Any], versions: dict[str, str]) -> list[str]:
    """The markdown tables of one workload: one per metric."""
    lines: list[str] = []
    for metric in workload.metrics:
        rows = summary[workload.id][metric.key]
        better = "higher" if metric.higher_is_better else "lower"
        unit = f" ({metric.unit})" if metric.unit else ""
        lines += [f"{metric.label[0].upper()}{metric.label[1:]}{unit}, {better} is better:", "",
                  "| framework | version | median | min–max | distrib / peer |",
                  "| --- | --- | ---: | ---: | ---: |"]
        ours = rows.get("distrib", {}).get("median")
        for name, row in rows.items():
            version = versions.get(name, "?")
            if row["median"] is None:
                lines.append(f"| {name} | {version} | failed ({row['failed']}/{row['runs']}) "
                             "| | |")
                continue
            spread = f"{fmt(row['min'])}–{fmt(row['max'])}"
            if row["failed"]:
                spread += f" ({row['failed']}/{row['runs']} failed)"
            ratio = "—" if name == "distrib" or ours is None or not row["median"] \
                else fmt(ours / row["median"])  # (a CPU time under a clock tick reads 0)
            lines.append(f"| {name} | {version} | {fmt(row['median'])} | {spread} | {ratio} |")
        lines.append("")
    return lines


def method_notes(options: Options) -> list[str]:
    """How the numbers were made, for the reader of the report."""
    notes = [
        f"Every number is the median over {options.reps} repetition(s), with min–max. Each "
        "measurement runs in a fresh subprocess (`python -m bench.measure`) that starts its "
        "own cluster; within each repetition the frameworks take turns workload by workload, "
        "and who goes first rotates between repetitions.",
        "Clusters: distrib `init(local_threads=slots)` (its embedded local worker); "
        "ProcessPoolExecutor(max_workers=slots) with the default start method; loky "
        "`get_reusable_executor(max_workers=slots)`; Dask `LocalCluster(n_workers=min(slots, 2), "
        "threads_per_worker=slots/n_workers, processes=True)` + `Client`; Ray "
        "`ray.init(num_cpus=slots, include_dashboard=False)`. 2 slots unless a workload says "
        "otherwise.",
        f"Warm-up, the same for every framework and every workload but W5, before anything is "
        f"timed: a round of `slots` no-op tasks, then rounds of `slots` x sleep({WARM_SLEEP}) "
        f"until one round finishes in under {2 * WARM_SLEEP:g} s, i.e. every slot has a live, "
        "idle worker (for W3: 100 workers).",
        "All frameworks run the same task functions from `bench/workloads.py`, imported on "
        "the workers by name. distrib ships the repository root as its workspace; its cache "
        "(`DISTRIB_CACHE_DIR`) and `TMPDIR` are fresh and empty for each measurement, so W5 "
        "includes distrib's first scan and upload of the workspace. distrib's own modules are "
        "compiled to bytecode before the run, as pip compiles an installed package (the "
        "peers'); its editable install here has none of its own.",
        "`distrib / peer` is distrib's median divided by the peer's: above 1 means distrib's "
        "number is larger, which is better where the table says higher is better.",
        "W4 sends distinct random (incompressible) payloads. W6 reads the Main's RSS (psutil) "
        "after warm-up and `gc.collect()`, and again right after the submit loop. W7 first "
        "gives every slot a long sleep, waits 1 s, and times only the loop of submits.",
    ]
    if options.quick:
        notes.append("**--quick: a smoke test.** Call counts are scaled down 10x (W3: 100 "
                     "calls on 10 slots); these numbers are not the benchmark's.")
    return notes


def source_warning(records: list[dict[str, Any]]) -> list[str]:
    """Report lines saying which measurements ran which distrib, if its source changed."""
    runs: dict[str, list[str]] = {}
    for r in records:
        if "distrib_source" in r:
            runs.setdefault(r["distrib_source"], []).append(f"{r['workload']} rep {r['rep']}")
    if len(runs) < 2:
        return []
    return [
        f"**distrib's source changed during the run**: its measurements ran {len(runs)} "
        "different versions (source hashes below), so its numbers mix them.",
        "",
        *[f"- `{digest}`: {', '.join(which)}" for digest, which in runs.items()],
        "",
    ]


def report(options: Options, records: list[dict[str, Any]], command: str, commit: str,
           facts: dict[str, Any], started: dt.datetime, seconds: float) -> tuple[str, dict[str, Any]]:
    """The markdown report and the JSON document with the same data."""
    summary = summarize(options, records)
    versions: dict[str, str] = {}
    for record in records:
        if "version" in record:
            versions.setdefault(record["framework"], record["version"])
    params = {w.id: (w.quick if options.quick else w.params) for w in options.workloads}
    lines = [
        "# distrib benchmark",
        "",
        f"- Command: `{command}`",
        f"- Machine: nproc {facts['nproc']}, {facts['memory_gib']} GiB memory, "
        f"{facts['python']}, {facts['platform']}, {facts['cpu']}; load average at start "
        f"{' / '.join(map(str, facts['load_average_at_start']))}",
        f"- Date: {started:%Y-%m-%d %H:%M %Z}; the run took {seconds / 60:.1f} min",
        f"- distrib: {versions.get('distrib', '?')} at commit {commit}",
        *([f"- distrib@{options.baseline}: the same, as of revision {options.baseline} "
           f"({baseline_commit(options.baseline)})"] if options.baseline else []),
        "",
        *source_warning(records),
        "## Method",
        "",
        *[f"- {note}" for note in method_notes(options)],
        "",
    ]
    for workload in options.workloads:
        lines += [f"## {title(workload, params[workload.id])}", ""]
        lines += [f"{note}", ""] if (note := " ".join(workload.notes)) else []
        lines += table(workload, summary, versions)
        cold = [r for r in records if r["workload"] == workload.id and r["ok"]
                and r["metrics"].get("warmup_complete") is False]
        for r in cold:
            lines += [f"Warm-up did not finish for {r['framework']} (rep {r['rep']}): not every "
                      "slot had a worker when timing began.", ""]
    leaks = [r for r in records if r.get("left_running")]
    failures = [r for r in records if not r["ok"]]
    if leaks:
        lines += ["## Processes left running", ""]
        lines += [f"- {r['workload']} {r['framework']} rep {r['rep']}: {r['left_running']} "
                  "process(es) still ran after the measurement exited; killed." for r in leaks]
        lines.append("")
    if failures:
        lines += ["## Failures", ""]
        for r in failures:
            lines += [f"### {r['workload']} {r['framework']}, rep {r['rep']}", "", "```",
                      r["error"], "```", ""]
    document = {
        "command": command,
        "date": started.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "machine": facts,
        "commit": commit,
        "reps": options.reps,
        "quick": options.quick,
        "frameworks": list(options.frameworks),
        "versions": versions,
        "workloads": {w.id: {"title": title(w, params[w.id]), "params": params[w.id],
                             "metrics": [vars(m) for m in w.metrics]}
                      for w in options.workloads},
        "summary": summary,
        "measurements": records,
    }
    return "\n".join(lines).rstrip() + "\n", document


def compile_distrib() -> None:
    """Give distrib's modules their bytecode, as the peers' installed packages have theirs:
    an editable install has none, and where Python may not write it (PYTHONDONTWRITEBYTECODE)
    every Main, worker and executor would compile them again at each start."""
    spec = importlib.util.find_spec("distrib")
    assert spec is not None and spec.origin is not None
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(spec.origin).parent)],
                   stdout=subprocess.DEVNULL)  # (a file that fails is the run's to report)


def main(argv: list[str]) -> int:
    """Run the benchmark and write its report; the path of the report goes to stdout."""
    options = parse(argv)
    command = " ".join([os.environ.get("BENCH_ENTRY", "python -m bench"), shlex.join(argv)])
    facts = machine()  # before the run: the load average is about what else was running
    compile_distrib()
    commit = git_commit()
    started = dt.datetime.now().astimezone()
    t0 = time.monotonic()
    records = run(options)
    markdown, document = report(options, records, command, commit, facts, started,
                                time.monotonic() - t0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    # A smoke test does not overwrite the day's real results.
    stem = f"{started:%Y-%m-%d}" + ("-quick" if options.quick else "")
    (RESULTS / f"{stem}.md").write_text(markdown)
    (RESULTS / f"{stem}.json").write_text(json.dumps(document, indent=1) + "\n")
    failed = sum(not r["ok"] for r in records)
    print(f"{len(records) - failed} of {len(records)} measurements succeeded", file=sys.stderr)
    print(RESULTS / f"{stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

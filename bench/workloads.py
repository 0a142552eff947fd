"""The task functions every framework runs, and the workload drivers that time them.

Task functions are plain module-level functions so that every framework ships them the same
way: by reference to ``bench.workloads``. Drivers run inside a measurement subprocess
(``bench.measure``), start their own cluster, and return their metrics as a dict.
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import cold
from bench.frameworks import Framework, load

# --- task functions (the same bodies for every framework) ------------------------------------


def noop() -> None:
    """Do nothing: a warm-up task."""


def inc(x: int) -> int:
    """The smallest useful task."""
    return x + 1


def sleep(seconds: float) -> None:
    """Hold a slot without using a core."""
    time.sleep(seconds)


def nbytes(data: bytes) -> int:
    """Receive a payload and return its length."""
    return len(data)


def same(array: Any) -> Any:
    """Receive an array and send it back."""
    return array


def head(array: Any, i: int) -> float:
    """Read one number of a large array (a lookup table)."""
    return float(array[i])


# --- helpers -----------------------------------------------------------------------------------

Metrics = dict[str, Any]

WARM_SLEEP = 0.2  # seconds each task of a warm-up round sleeps
WARM_LIMIT = 180.0  # seconds to wait for every slot to have a live worker


def warm_up(fw: Framework, slots: int) -> Metrics:
    """Make sure every slot has a live worker before anything is timed.

    A round of no-ops starts the workers of frameworks that start them on demand; no-ops
    finish too fast to need them all, so rounds of ``slots`` sleeps follow until one round
    runs all at once (in under twice the sleep), i.e. ``slots`` workers exist and are idle.
    """
    started = time.monotonic()
    for handle in [fw.submit(noop) for _ in range(slots)]:
        fw.result(handle)
    rounds = 0
    while True:
        rounds += 1
        t0 = time.monotonic()
        for handle in [fw.submit(sleep, WARM_SLEEP) for _ in range(slots)]:
            fw.result(handle)
        concurrent = time.monotonic() - t0 < 2 * WARM_SLEEP
        if concurrent or time.monotonic() - started > WARM_LIMIT:
            return {"warmup_rounds": rounds, "warmup_s": time.monotonic() - started,
                    "warmup_complete": concurrent}


@contextmanager
def started(name: str, slots: int) -> Iterator[Framework]:
    """A started framework, cold (no warm-up); stopped on exit."""
    fw = load(name)
    fw.start(slots)
    try:
        yield fw
    finally:
        fw.stop()


@contextmanager
def cluster(name: str, slots: int) -> Iterator[tuple[Framework, Metrics]]:
    """A started and warmed-up framework (and what the warm-up took); stopped on exit."""
    with started(name, slots) as fw:
        yield fw, warm_up(fw, slots)


def rss() -> int:
    """Resident set size of this process, in bytes."""
    return int(psutil.Process().memory_info().rss)


class PeakRss:
    """Peak RSS of this process and of the largest of its descendants (a worker daemon or
    executor), sampled every ``every`` seconds while in the ``with`` block."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.main = self.worker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.every):
            self.main = max(self.main, me.memory_info().rss)
            for child in me.children(recursive=True):
                try:
                    self.worker = max(self.worker, child.memory_info().rss)
                except psutil.Error:
                    pass


def check(got: list[Any], expected: list[Any], what: str) -> None:
    """A fast wrong answer is no result: fail the measurement."""
    if got != expected:
        bad = next(i for i, (g, e) in enumerate(zip(got, expected)) if g != e)
        raise AssertionError(f"{what}: call {bad} returned {got[bad]!r}, expected {expected[bad]!r}")


# --- drivers -----------------------------------------------------------------------------------


def throughput(name: str, p: Metrics) -> Metrics:
    """W1: submit ``calls`` x inc(x), then collect them all."""
    with cluster(name, p["slots"]) as (fw, extra):
        t0 = time.perf_counter()
        handles = [fw.submit(inc, i) for i in range(p["calls"])]
        results = [fw.result(h) for h in handles]
        elapsed = time.perf_counter() - t0
    check(results, [i + 1 for i in range(p["calls"])], "inc")
    return {"tasks_per_s": p["calls"] / elapsed, "elapsed_s": elapsed, **extra}


def throughput_progress(name: str, p: Metrics) -> Metrics:
    """W1 with distrib's progress drawing on: ``gather(..., progress=True)``."""
    import distrib

    with cluster(name, p["slots"]) as (fw, extra):
        t0 = time.perf_counter()
        handles = [fw.submit(inc, i) for i in range(p["calls"])]
        results = distrib.gather(handles, progress=True)
        elapsed = time.perf_counter() - t0
    check(results, [i + 1 for i in range(p["calls"])], "inc")
    return {"tasks_per_s": p["calls"] / elapsed, "elapsed_s": elapsed, **extra}


def throughput_dashboard(name: str, p: Metrics) -> Metrics:
    """W1 with distrib's dashboard on, and read twice a second as an open page does."""
    import urllib.request

    from distrib.main import _current

    os.environ["DISTRIB_DASHBOARD"] = "127.0.0.1:0"
    try:
        with cluster(name, p["slots"]) as (fw, extra):
            session = _current._session
            assert session is not None and session.dashboard is not None
            url = session.dashboard.url + "api/snapshot"
            stop = threading.Event()

            def read() -> None:
                while not stop.wait(0.5):
                    with urllib.request.urlopen(url, timeout=10) as reply:
                        reply.read()

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            t0 = time.perf_counter()
            handles = [fw.submit(inc, i) for i in range(p["calls"])]
            results = [fw.result(h) for h in handles]
            elapsed = time.perf_counter() - t0
            stop.set()
            reader.join()
    finally:
        del os.environ["DISTRIB_DASHBOARD"]
    check(results, [i + 1 for i in range(p["calls"])], "inc")
    return {"tasks_per_s": p["calls"] / elapsed, "elapsed_s": elapsed, **extra}


def _cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) of this process and of every process below it, by pid."""
    me = psutil.Process()
    out: dict[int, float] = {}
    for proc in (me, *me.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.Error:  # (it ended meanwhile)
            continue
        out[proc.pid] = times.user + times.system
    return out


def _sleeps() -> dict[tuple[int, int], int]:
    """Voluntary context switches (sleeps, each ended by a wake-up) of every thread of this
    process and of every process below it, by (pid, tid)."""
    from bench.cpu import sleeps

    me = psutil.Process()
    out: dict[tuple[int, int], int] = {}
    for proc in (me, *me.children(recursive=True)):
        try:
            tids = os.listdir(f"/proc/{proc.pid}/task")
        except OSError:
            continue
        for tid in tids:
            out[(proc.pid, int(tid))] = sleeps(proc.pid, int(tid))
    return out


def latency(name: str, p: Metrics) -> Metrics:
    """W2: ``calls`` sequential call-then-wait round trips, and the CPU they took: this
    process's (the Main's) and its children's (the workers'), per call."""
    samples: list[float] = []
    with cluster(name, p["slots"]) as (fw, extra):
        before, slept = _cpu_seconds(), _sleeps()
        for i in range(p["calls"]):
            t0 = time.perf_counter()
            result = fw.result(fw.submit(inc, i))
            samples.append(time.perf_counter() - t0)
            check([result], [i + 1], "inc")
        after = _cpu_seconds()
        naps = sum(n - slept.get(key, 0) for key, n in _sleeps().items())
    used = {pid: seconds - before.get(pid, 0.0) for pid, seconds in after.items()}
    main = used.pop(os.getpid(), 0.0)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"median_us": statistics.median(samples) * 1e6, "p99_us": cuts[98] * 1e6,
            "cpu_us": (main + sum(used.values())) / p["calls"] * 1e6,
            "main_cpu_us": main / p["calls"] * 1e6,
            "workers_cpu_us": sum(used.values()) / p["calls"] * 1e6,
            "sleeps": naps / p["calls"], **extra}


def cpu_trace(name: str, p: Metrics) -> Metrics:
    """W1-cpu, W2-cpu: CPU per call of each process and thread (``bench.cpu``)."""
    from bench import cpu

    with cluster(name, p["slots"]) as (fw, extra):
        cpu.warm(fw)
        roles, _wall, slept = cpu.trace(fw, p["calls"], p["way"])
    return {**roles, "all_us": sum(roles.values()), "all_sleeps": sum(slept.values()),
            **{k.removesuffix("_us") + "_sleeps": v for k, v in slept.items()}, **extra}


def sleeps(name: str, p: Metrics) -> Metrics:
    """W3: ``calls`` x sleep(``seconds``) on ``slots`` slots; efficiency = ideal / elapsed."""
    ideal = p["calls"] * p["seconds"] / p["slots"]
    with cluster(name, p["slots"]) as (fw, extra):
        t0 = time.perf_counter()
        for handle in [fw.submit(sleep, p["seconds"]) for _ in range(p["calls"])]:
            fw.result(handle)
        elapsed = time.perf_counter() - t0
    return {"efficiency": ideal / elapsed, "elapsed_s": elapsed, "ideal_s": ideal, **extra}


def data(name: str, p: Metrics) -> Metrics:
    """W4: ``calls`` calls each sending ``mb`` MB of random bytes and getting its length."""
    size = int(p["mb"] * 1_000_000)
    # Random (incompressible) and distinct payloads: no framework can win by compressing
    # or deduplicating them.
    payloads = [os.urandom(size) for _ in range(p["calls"])]
    with cluster(name, p["slots"]) as (fw, extra):
        t0 = time.perf_counter()
        results = [fw.result(h) for h in [fw.submit(nbytes, d) for d in payloads]]
        elapsed = time.perf_counter() - t0
    check(results, [size] * p["calls"], "nbytes")
    return {"mb_per_s": p["calls"] * size / 1e6 / elapsed, "elapsed_s": elapsed, **extra}


def arrays(name: str, p: Metrics) -> Metrics:
    """W4b: ``calls`` numpy arrays of ``mb`` MB each, sent as the argument and returned."""
    import numpy

    size = int(p["mb"] * 1_000_000) // 8
    payloads = [numpy.random.default_rng(i).random(size) for i in range(p["calls"])]
    with cluster(name, p["slots"]) as (fw, extra):
        with PeakRss() as peak:
            t0 = time.perf_counter()
            results = [fw.result(h) for h in [fw.submit(same, a) for a in payloads]]
            elapsed = time.perf_counter() - t0
    if not all(numpy.array_equal(r, a) for r, a in zip(results, payloads)):
        raise AssertionError("same: an array came back changed")
    moved = 2 * p["calls"] * size * 8
    return {"mb_per_s": moved / 1e6 / elapsed, "elapsed_s": elapsed,
            "main_peak_mb": peak.main / 1e6, "worker_peak_mb": peak.worker / 1e6, **extra}


def one_array(name: str, p: Metrics) -> Metrics:
    """W4c: one ``mb`` MB array passed to ``calls`` calls, handed over once where the
    framework can (``put``)."""
    import numpy

    table = numpy.arange(int(p["mb"] * 1_000_000) // 8, dtype=numpy.float64)
    step = len(table) // p["calls"]
    with cluster(name, p["slots"]) as (fw, extra):
        t0 = time.perf_counter()
        handle = fw.put(table)
        results = [fw.result(h) for h in [fw.submit(head, handle, i * step)
                                          for i in range(p["calls"])]]
        elapsed = time.perf_counter() - t0
    check(results, [float(i * step) for i in range(p["calls"])], "head")
    return {"seconds": elapsed, **extra}




def _fresh_process(name: str, timeout: float, env: dict[str, str] | None = None
                   ) -> tuple[float, float]:
    """Wall time of a whole fresh process running ``bench.cold``, and of its start and first
    call."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.cold", name],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
        )
        # A blocking wait sees the exit at once; ``Popen.wait(timeout)`` (as ``run`` with a
        # timeout does) polls, sleeping up to 50 ms between looks, which the time then counts.
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            proc.wait()
        finally:
            watchdog.cancel()
        elapsed = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode(errors="replace")
        if elapsed >= timeout:
            raise RuntimeError(f"the cold-start process ran past {timeout} s:\n{text[-4000:]}")
        if proc.returncode != 0:
            raise RuntimeError(f"the cold-start process exited with {proc.returncode}:\n"
                               f"{text[-4000:]}")
    first = next(float(line.removeprefix(cold.FIRST_CALL_TAG)) for line in text.splitlines()
                 if line.startswith(cold.FIRST_CALL_TAG))
    return elapsed, first


def cold_start(name: str, p: Metrics) -> Metrics:
    """W5: wall time of a whole fresh process running ``bench.cold``."""
    return {"seconds": _fresh_process(name, p["timeout_s"])[0]}


def warm_start(name: str, p: Metrics) -> Metrics:
    """W5b: W5's process run twice with distrib's ``linger``: the second run, timed, attaches
    to the local cluster's daemon the first left (its workspace cached, its executors up)."""
    from distrib._linger import running

    runtime = tempfile.mkdtemp(prefix="run-")  # (this measurement's lingering daemon alone)
    env = {**os.environ, "DISTRIB_LINGER": p["linger"], "XDG_RUNTIME_DIR": runtime}
    try:
        _fresh_process(name, p["timeout_s"], env)
        elapsed, first = _fresh_process(name, p["timeout_s"], env)
    finally:
        for folder in Path(runtime, "distrib").glob("local-*"):
            pid = running(folder)
            if pid is not None:
                subprocess.run([sys.executable, "-m", "distrib", "worker", "stop", "--pid",
                                str(pid)], env=env, stdout=subprocess.DEVNULL, timeout=60)
                psutil.Process(pid).wait(30)
    return {"seconds": elapsed, "first_call_s": first}


def full_parallelism(name: str, p: Metrics) -> Metrics:
    """W8: on a fresh cluster (no warm-up), ``calls`` concurrent sleeps of a module that
    imports numpy; wall time from the first call to the last result, and from the cluster's
    start (as a script that starts it and calls at once sees it)."""
    from bench import numpy_tasks  # (the Main imports it, as a script importing numpy does)

    t0 = time.perf_counter()
    with started(name, p["slots"]) as fw:
        elapsed = _naps(fw, numpy_tasks.nap, p["calls"], p["seconds"])
        with_start = time.perf_counter() - t0
    return {"seconds": elapsed, "with_start_s": with_start,
            "efficiency": p["seconds"] / elapsed}


def first_batch(name: str, p: Metrics) -> Metrics:
    """W8b: the seed example's first batch: a fresh cluster, one warm-up call, then ``calls``
    sleeps of a module that imports numpy; efficiency = ideal / elapsed."""
    from bench import numpy_tasks  # (before the cluster starts, as in W8)

    ideal = p["calls"] * p["seconds"] / p["slots"]
    with started(name, p["slots"]) as fw:
        _naps(fw, numpy_tasks.nap, 1, 0.0)
        elapsed = _naps(fw, numpy_tasks.nap, p["calls"], p["seconds"])
    return {"efficiency": ideal / elapsed, "elapsed_s": elapsed, "ideal_s": ideal}


def _naps(fw: Framework, nap: Callable[[float], int], calls: int, seconds: float) -> float:
    """Wall time of ``calls`` concurrent ``nap(seconds)``, checked."""
    t0 = time.perf_counter()
    handles = [fw.submit(nap, seconds) for _ in range(calls)]
    check([fw.result(h) for h in handles], [1] * calls, "nap")
    return time.perf_counter() - t0


def nested(name: str, p: Metrics) -> Metrics:
    """W9: time per call made from inside a task, ``calls`` at once (then gathered) and
    ``calls`` one after the other."""
    from bench.nested import chain, fan_out

    calls = p["calls"]
    if "redistribution" in p:  # (this measurement's own process: the setting is read at init)
        os.environ["DISTRIB_REDISTRIBUTION"] = p["redistribution"]
    with cluster(name, p["slots"]) as (fw, extra):
        fw.result(fw.submit(fan_out, name, 2))  # (the inner function, made ready)
        t0 = time.perf_counter()
        total = fw.result(fw.submit(fan_out, name, calls))
        wide = time.perf_counter() - t0
        t0 = time.perf_counter()
        last = fw.result(fw.submit(chain, name, calls))
        deep = time.perf_counter() - t0
    check([total, last], [sum(range(1, calls + 1)), calls], "nested")
    return {"fan_out_us": wide / calls * 1e6, "chain_us": deep / calls * 1e6, **extra}


def memory(name: str, p: Metrics) -> Metrics:
    """W6: the Main's RSS growth with ``calls`` calls submitted and not yet collected."""
    with cluster(name, p["slots"]) as (fw, extra):
        gc.collect()
        before = rss()
        t0 = time.perf_counter()
        handles = [fw.submit(inc, i) for i in range(p["calls"])]
        submit_s = time.perf_counter() - t0
        grown = rss() - before
        del handles  # held until the reading above; the cluster then stops with calls pending
    return {"rss_mb": grown / 1e6, "bytes_per_call": grown / p["calls"], "submit_s": submit_s,
            **extra}


def submit_cost(name: str, p: Metrics) -> Metrics:
    """W7: time of the submit loop alone, while every slot runs a long sleep."""
    with cluster(name, p["slots"]) as (fw, extra):
        busy_from = time.monotonic()
        busy = [fw.submit(sleep, p["busy_s"]) for _ in range(p["slots"])]
        time.sleep(p["settle_s"])  # let the sleeps reach the workers before timing
        t0 = time.perf_counter()
        handles = [fw.submit(inc, i) for i in range(p["calls"])]
        elapsed = time.perf_counter() - t0
        # Only valid if the workers were still busy when the loop ended.
        busy_throughout = time.monotonic() - busy_from < p["busy_s"]
        for handle in busy:
            fw.result(handle)
        results = [fw.result(h) for h in handles]
    check(results, [i + 1 for i in range(p["calls"])], "inc")
    if not busy_throughout:
        raise RuntimeError(f"the submit loop outlasted the {p['busy_s']} s busy sleeps; "
                           "raise busy_s for this framework")
    return {"submit_us": elapsed / p["calls"] * 1e6, "loop_s": elapsed, **extra}


# --- the catalogue -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One reported number of a workload."""

    key: str
    label: str
    unit: str
    higher_is_better: bool


@dataclass(frozen=True)
class Workload:
    """A workload: what it measures, its driver, and its parameters (full and ``--quick``)."""

    id: str
    group: str  # what ``--only`` selects by (or by its id, for one workload of a group)
    title: str
    metrics: tuple[Metric, ...]
    driver: Callable[[str, Metrics], Metrics]
    params: Metrics
    quick: Metrics
    timeout_s: float
    frameworks: tuple[str, ...] | None = None  # None: every framework
    notes: tuple[str, ...] = field(default=())


_CPU_METRICS = (Metric("all_us", "all processes", "µs", False),
                *(Metric(key, label, "µs", False) for key, label in (
                    ("user_us", "Main: the user's thread"),
                    ("io_us", "Main: its I/O thread"),
                    ("main_other_us", "Main: its other threads"),
                    ("daemon_us", "worker daemon"),
                    ("executors_us", "executors"))),
                Metric("all_sleeps", "sleeps per call (wake-ups), all processes", "", False),
                *(Metric(key, label, "", False) for key, label in (
                    ("user_sleeps", "sleeps: the user's thread"),
                    ("io_sleeps", "sleeps: the Main's I/O thread"),
                    ("main_other_sleeps", "sleeps: the Main's other threads"),
                    ("daemon_sleeps", "sleeps: the worker daemon"),
                    ("executors_sleeps", "sleeps: executors"))))
_CPU_NOTES = ("CPU time (user + system, read from /proc before and after) per call, by process "
              "and thread: what each adds to a call, steady on a busy machine where wall time "
              "is not. Sleeps: voluntary context switches per call (a wait for a message, a "
              "lock or the interpreter lock, ended by a wake-up).",)

_NESTED_METRICS = (Metric("fan_out_us", "time per call made at once", "µs", False),
                   Metric("chain_us", "time per call made one after the other", "µs", False))

WORKLOADS: dict[str, Workload] = {w.id: w for w in [
    Workload(
        "W1", "W1", "W1 throughput: {calls:,} x inc(x), submit all then collect all",
        (Metric("tasks_per_s", "throughput", "tasks/s", True),),
        throughput, {"slots": 2, "calls": 10_000}, {"slots": 2, "calls": 1_000}, 600,
    ),
    Workload(
        "W1-progress", "W1", "W1 with progress, distrib only: {calls:,} x inc(x), collected "
        "with gather(progress=True)",
        (Metric("tasks_per_s", "throughput", "tasks/s", True),),
        throughput_progress, {"slots": 2, "calls": 10_000}, {"slots": 2, "calls": 1_000}, 600,
        frameworks=("distrib",),
        notes=("stderr is not a terminal here: progress counts every call and prints one "
               "summary line; compare with W1's distrib row of the same run.",),
    ),
    Workload(
        "W1-dashboard", "W1", "W1 with the dashboard on, distrib only: {calls:,} x inc(x), "
        "the snapshot read twice a second",
        (Metric("tasks_per_s", "throughput", "tasks/s", True),),
        throughput_dashboard, {"slots": 2, "calls": 10_000}, {"slots": 2, "calls": 1_000}, 600,
        frameworks=("distrib",),
        notes=("compare with W1's distrib row of the same run.",),
    ),
    Workload(
        "W2", "W2", "W2 latency: {calls:,} sequential inc(x) call-then-wait",
        (Metric("median_us", "median latency", "µs", False),
         Metric("p99_us", "p99 latency", "µs", False),
         Metric("cpu_us", "CPU per call, all processes", "µs", False),
         Metric("main_cpu_us", "CPU per call, the Main's process", "µs", False),
         Metric("workers_cpu_us", "CPU per call, the processes it started", "µs", False),
         Metric("sleeps", "sleeps per call (wake-ups), all threads of all processes", "",
                False)),
        latency, {"slots": 2, "calls": 1_000}, {"slots": 2, "calls": 100}, 600,
    ),
    Workload(
        "W1-cpu", "W1", "W1 CPU per call, distrib only: {calls:,} x inc(x) at once",
        _CPU_METRICS, cpu_trace, {"slots": 2, "calls": 10_000, "way": "W1"},
        {"slots": 2, "calls": 1_000, "way": "W1"}, 600, frameworks=("distrib",),
        notes=_CPU_NOTES,
    ),
    Workload(
        "W2-cpu", "W2", "W2 CPU per call, distrib only: {calls:,} x inc(x) call-then-wait",
        _CPU_METRICS, cpu_trace, {"slots": 2, "calls": 2_000, "way": "W2"},
        {"slots": 2, "calls": 200, "way": "W2"}, 600, frameworks=("distrib",),
        notes=_CPU_NOTES,
    ),
    Workload(
        "W3", "W3", "W3 sleeps: {calls:,} x sleep({seconds}) on {slots} slots",
        (Metric("efficiency", "efficiency (ideal / elapsed)", "", True),),
        sleeps, {"slots": 100, "calls": 1_000, "seconds": 0.1},
        {"slots": 10, "calls": 100, "seconds": 0.1}, 900,
        notes=("Dask runs the slots as threads in 2 worker processes (sleeps release the GIL); "
               "the others run one process per slot.",),
    ),
    Workload(
        "W9", "W9", "W9 calls from inside a task: {calls} calls of inc made by one task, at "
        "once then gathered, and one after the other",
        _NESTED_METRICS,
        nested, {"slots": 2, "calls": 500}, {"slots": 2, "calls": 20}, 600,
        frameworks=("distrib", "ray", "dask"),
        notes=("distrib with its default redistribution (auto): the worker places each call "
               "itself, on its own slots (the local cluster is one worker); Ray submits from "
               "the worker (ray.get inside a task); Dask uses worker_client. "
               "ProcessPoolExecutor and loky cannot submit from inside a task.",),
    ),
    Workload(
        "W9-relayed", "W9", "W9 relayed, distrib only: {calls} calls of inc made by one task, "
        "each through the Main, at once then gathered, and one after the other",
        _NESTED_METRICS,
        nested, {"slots": 2, "calls": 500, "redistribution": "relayed"},
        {"slots": 2, "calls": 20, "redistribution": "relayed"}, 600,
        frameworks=("distrib",),
        notes=("redistribution=\"relayed\": compare with W9's distrib row of the same run.",),
    ),
    Workload(
        "W4", "W4", "W4 data: {calls} calls each sending {mb:g} MB of bytes, returning its length",
        (Metric("mb_per_s", "transfer rate", "MB/s", True),),
        data, {"slots": 2, "calls": 20, "mb": 10}, {"slots": 2, "calls": 2, "mb": 10}, 600,
    ),
    Workload(
        "W4b", "W4B", "W4b arrays: {calls} numpy arrays of {mb:g} MB, each the argument and "
        "the result of a call",
        (Metric("mb_per_s", "transfer rate (both ways)", "MB/s", True),
         Metric("main_peak_mb", "Main's peak RSS", "MB", False),
         Metric("worker_peak_mb", "largest worker process's peak RSS", "MB", False)),
        arrays, {"slots": 2, "calls": 20, "mb": 80}, {"slots": 2, "calls": 4, "mb": 80}, 900,
        notes=("The arrays (1.6 GB) and the results are all held by the Main: its RSS counts "
               "both. The worker figure is the largest process the framework started.",),
    ),
    Workload(
        "W4c", "W4C", "W4c one array to many calls: one {mb:g} MB array passed to {calls} calls",
        (Metric("seconds", "wall time", "s", False),),
        one_array, {"slots": 2, "calls": 200, "mb": 200}, {"slots": 2, "calls": 20, "mb": 200},
        900,
        notes=("Handed over once with distrib.share, ray.put and Dask's scatter(broadcast=True); "
               "ProcessPoolExecutor and loky have nothing for it and pickle it with every call.",),
    ),
    Workload(
        "W5", "W5", "W5 cold start: a fresh process starts a 2-slot cluster, runs one call, exits",
        (Metric("seconds", "wall time", "s", False),),
        cold_start, {"timeout_s": 300}, {"timeout_s": 300}, 400,
    ),
    Workload(
        "W5b", "W5", "W5b warm second run, distrib only: W5's process run again with "
        "linger = \"{linger}\"",
        (Metric("seconds", "wall time of the second run", "s", False),
         Metric("first_call_s", "init() and the first call", "s", False)),
        warm_start, {"timeout_s": 300, "linger": "1m"}, {"timeout_s": 300, "linger": "1m"},
        700, frameworks=("distrib",),
        notes=("The first run starts the local cluster's daemon and leaves it up (`linger`); "
               "only the second, which attaches to it, is timed. Compare with W5's distrib "
               "row of the same run.",),
    ),
    Workload(
        "W8", "W8", "W8 time to full parallelism: a fresh {slots}-slot cluster runs {calls} "
        "concurrent sleep({seconds}) of a module importing numpy",
        (Metric("with_start_s", "start of the cluster to last result", "s", False),
         Metric("seconds", "first call to last result", "s", False)),
        full_parallelism, {"slots": 20, "calls": 20, "seconds": 0.5},
        {"slots": 20, "calls": 20, "seconds": 0.5}, 600,
        notes=("No warm-up. Timed from the cluster's start (`init()`, or the pool made), as a "
               "script that starts it and calls at once sees it, and from the first call "
               "(the cluster started). ProcessPoolExecutor forks its workers from the Main, "
               "which imported numpy, at the first calls.",),
    ),
    Workload(
        "W8b", "W8", "W8b first batch: a fresh {slots}-slot cluster, one warm-up call, then "
        "{calls} x sleep({seconds}) of a module importing numpy",
        (Metric("efficiency", "efficiency (ideal / elapsed)", "", True),),
        first_batch, {"slots": 20, "calls": 200, "seconds": 0.05},
        {"slots": 20, "calls": 200, "seconds": 0.05}, 600,
        notes=("The seed example's first batch: only the one warm-up call comes before the "
               "timing, not the harness's warm-up.",),
    ),
    Workload(
        "W6", "W6", "W6 memory: Main's RSS growth with {calls:,} calls submitted, not collected",
        (Metric("rss_mb", "RSS growth", "MB", False),),
        memory, {"slots": 2, "calls": 100_000}, {"slots": 2, "calls": 10_000}, 900,
    ),
    Workload(
        "W6-1M", "W6", "W6 memory, distrib only: {calls:,} calls submitted, not collected",
        (Metric("rss_mb", "RSS growth", "MB", False),),
        memory, {"slots": 2, "calls": 1_000_000}, {"slots": 2, "calls": 100_000}, 1200,
        frameworks=("distrib",),
    ),
    Workload(
        "W7", "W7", "W7 submit cost: {calls:,} submits while every slot is busy",
        (Metric("submit_us", "submit time per call", "µs", False),),
        submit_cost, {"slots": 2, "calls": 10_000, "busy_s": 8.0, "settle_s": 1.0},
        {"slots": 2, "calls": 1_000, "busy_s": 4.0, "settle_s": 1.0}, 600,
    ),
]}

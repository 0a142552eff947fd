"""W10, the runtime at scale: many one-slot worker daemons on this machine, and one or more Mains.

    bench/.venv/bin/python -m bench.scale run   [--workers 10,100,200] [--tasks 20 x N] [--seconds 1]
    bench/.venv/bin/python -m bench.scale burst [--base 10] [--burst 200] [--within 5]
    bench/.venv/bin/python -m bench.scale mains [--workers 100] [--mains 10] [--tasks 1000]
    (any of them with --quick: a few workers and tasks, for development)

Every worker is a real ``distrib worker`` process with one slot, a cache folder and a key of
its own, on loopback; the Mains are real processes with keys the workers authorize. All the
daemons are started in one process group, ended together (SIGTERM, then SIGKILL) on exit.

``run``: for each worker count N, one Main runs a warm round (every worker has run a task), then
``--tasks`` x sleep(``--seconds``) (20 per worker without it: 4,000 on 200). Reported: efficiency (ideal time / measured, ideal being
tasks x seconds / workers), the Main's CPU time per task over the timed run, its peak RSS, the
longest gap between two results, and an idle daemon's RSS (median of them all before any
Main connects).

``burst``: a Main runs tasks on ``--base`` workers while ``--burst`` more, started beforehand
and stopped (SIGSTOP), resume within ``--within`` seconds and join it. Reported: the longest
gap between two results while they join, against the longest before, how long until all
of them are serving it, and the Main's longest turn between two polls of its I/O thread (its
wall and its CPU time: the CPU shows a Main that stalls, where a loaded machine stretches only
the wall).

``mains``: ``--mains`` Mains share ``--workers`` workers, each running ``--tasks`` x
sleep(``--seconds``), started together; the first of them stops submitting halfway. Reported:
each Main's slot-seconds while all of them want more (from the moment all are told to
submit to the first one's last end), as a share of the workers (a tenth each for ten Mains),
and how fast the slots of the Main that left go to the others. A one-slot
worker serves its Mains in turns, a round of ten tasks for ten Mains: by default each Main
runs ten rounds' worth (10 tasks per worker for ten Mains), so that the window (five rounds,
until the first Main is done) is not a round or two, whose share is that of the Mains who
happened to have their turns in it. ``--log FILE`` keeps each task's Main, start, end and
worker. Each Main's context (argv, forwarded variables) is its own, so each has executors and
a template of its own on every worker (1,000 processes for ten Mains on 100 workers, ~16 MB
each); ``--same-context`` makes them alike (one template and executor per worker for all).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from distrib.wire import _keys

# The Main, as a user's script: it prints one JSON line of what it measured.
SCRIPT = textwrap.dedent("""
    import json, os, resource, sys, time
    import psutil
    import distrib
    from distrib import distributed, as_completed, gather
    from distrib.main import _current

    def worker_name():
        # The daemon that runs this task (an ancestor started with --name), for the shares
        # per worker.
        pid = os.getppid()
        for _ in range(6):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\\0")
                if b"--name" in argv:
                    return argv[argv.index(b"--name") + 1].decode()
                with open(f"/proc/{pid}/stat") as f:
                    pid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break
        return "?"

    # A variable the tasks' code names is forwarded to them, and a Main's executors are
    # those of its argv and forwarded variables (its context): each Main's own (``mains``),
    # unless the driver leaves it unset (--same-context).
    CONTEXT = os.environ.get("MAIN_CONTEXT")

    @distributed
    def nap(seconds, log=None, who=None):
        start = time.time()
        time.sleep(seconds)
        if log:
            with open(log, "a") as f:
                f.write(f"{who} {start} {time.time()} {worker_name()}\\n")

    def wait_workers(session, n, timeout):
        deadline = time.monotonic() + timeout
        while len(session.scheduler.workers) < n:
            if time.monotonic() > deadline:
                sys.exit(f"only {len(session.scheduler.workers)} of {n} workers joined")
            time.sleep(0.05)

    def warm(n):
        # Rounds of n sleeps until one runs all at once: every worker has the workspace and
        # an executor, and takes a task as soon as it is free.
        for _ in range(10):
            t0 = time.monotonic()
            gather([nap(0.3) for _ in range(n)], timeout=600)
            if time.monotonic() - t0 < 0.9:
                return True
        return False  # (said in the result: the cores are too busy for the workers)

    def timed(responses):
        times = []
        for _ in as_completed(responses, timeout=3600):
            times.append(time.monotonic())
        return times

    def sample(path):
        # A sampler of the I/O thread's stack (--profile): where its time goes, by function.
        import collections, threading
        own, total = collections.Counter(), collections.Counter()
        def loop():
            io = None
            while True:
                time.sleep(0.005)
                if io is None:
                    io = next((t.ident for t in threading.enumerate() if t.name == "distrib-io"), None)
                    continue
                frame = sys._current_frames().get(io)
                if frame is None:
                    continue
                seen = set()
                own[(frame.f_code.co_filename.split("/src/")[-1], frame.f_code.co_name)] += 1
                while frame is not None:
                    key = (frame.f_code.co_filename.split("/src/")[-1], frame.f_code.co_name)
                    if key not in seen:
                        seen.add(key)
                        total[key] += 1
                    frame = frame.f_back
        def dump():
            n = max(1, sum(own.values()))
            with open(path, "w") as f:
                f.write(f"{n} samples of the I/O thread\\n-- own --\\n")
                for (file, fn), c in own.most_common(30):
                    f.write(f"{c / n:6.1%} {fn} ({file})\\n")
                f.write("-- with callees --\\n")
                for (file, fn), c in total.most_common(40):
                    f.write(f"{c / n:6.1%} {fn} ({file})\\n")
        threading.Thread(target=loop, daemon=True).start()
        return dump

    def busy_turns():
        # The I/O thread's longest turn between two polls, in wall and in its own CPU time:
        # a Main that stalls running work handles many events in one turn (CPU), where a
        # loaded machine only stretches the wall time.
        import threading, traceback, zmq
        longest = {"wall": 0.0, "cpu": 0.0, "stalls": []}
        since = {}
        poll = zmq.Poller.poll
        def timed_poll(self, *args, **kwargs):
            if threading.current_thread().name == "distrib-io":
                if since:
                    longest["wall"] = max(longest["wall"], time.monotonic() - since["wall"])
                    longest["cpu"] = max(longest["cpu"], time.thread_time() - since["cpu"])
                since["io"] = threading.get_ident()
                since["in_poll"] = True
                out = poll(self, *args, **kwargs)
                since["wall"], since["cpu"] = time.monotonic(), time.thread_time()
                since["in_poll"] = False
                return out
            return poll(self, *args, **kwargs)
        zmq.Poller.poll = timed_poll
        def watch():
            # Where the I/O thread is when a turn has lasted over half a second, once a turn.
            seen = None
            while True:
                time.sleep(0.05)
                at = since.get("wall")
                if at is None or since.get("in_poll") or at == seen:
                    continue
                if time.monotonic() - at > 0.5:
                    seen = at
                    frame = sys._current_frames().get(since["io"])
                    if frame is not None and len(longest["stalls"]) < 5:
                        longest["stalls"].append("".join(traceback.format_stack(frame)[-8:]))
        threading.Thread(target=watch, daemon=True).start()
        return longest

    if __name__ == "__main__":
        dump = sample(os.environ["PROFILE"]) if os.environ.get("PROFILE") else None
        mode, n, tasks, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
        session = distrib.init()
        session = _current._session
        me = psutil.Process()
        out = {}
        if mode == "run":
            wait_workers(session, n, 600)
            out["warm"] = warm(n)
            print("START", flush=True)  # (the driver reads the daemons' CPU times then)
            cpu0, t0 = me.cpu_times(), time.monotonic()
            times = timed([nap(seconds) for _ in range(tasks)])
            t1, cpu1 = time.monotonic(), me.cpu_times()
            print("END", flush=True)
            out["elapsed"] = t1 - t0
            out["cpu"] = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
            out["gap"] = max(b - a for a, b in zip([t0] + times, times))
        elif mode == "burst":
            base, burst = n, int(sys.argv[5])
            wait_workers(session, base, 600)
            out["warm"] = warm(base)
            turns = busy_turns()
            responses = [nap(seconds) for _ in range(tasks)]
            print("SUBMITTED", flush=True)  # (the driver resumes the stopped workers now)
            t0 = time.monotonic()
            joined = []
            def watch():
                while len(session.scheduler.workers) < base + burst:
                    time.sleep(0.01)
                joined.append(time.monotonic())
            import threading
            threading.Thread(target=watch, daemon=True).start()
            times = timed(responses)
            out["t0"], out["times"] = t0, times
            out["all_joined"] = joined[0] - t0 if joined else None
            out["turn_wall"], out["turn_cpu"] = turns["wall"], turns["cpu"]
            out["stalls"] = turns["stalls"]
        else:  # "mains": slot-seconds are logged by the tasks themselves
            wait_workers(session, n, 600)
            # (each Main's executors started on every worker before the shares are measured:
            # else the window measures who started first)
            out["warm"] = warm(n)
            print("READY", flush=True)
            # (all Mains start together; what each runs comes now, not in its argv: the
            # same for all, so that their contexts may be too)
            _, who, tasks, log = sys.stdin.readline().split()
            gather([nap(seconds, log, who) for _ in range(int(tasks))], timeout=3600)
        if dump is not None:
            dump()
        out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print("RESULT " + json.dumps(out), flush=True)
        distrib.shutdown()
    """)


class Cluster:
    """``n`` one-slot worker daemons with keys of their own, in one process group."""

    def __init__(self, root: Path, mains: int = 1) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[str]] = []
        self.addresses: list[str] = []
        self.pgid: int | None = None
        self.main_keys = [root / f"main{i}.key" for i in range(mains)]
        for path in self.main_keys:
            _keys.write(path, _keys.generate())
        (root / "authorized").write_text("".join(
            p.with_name(p.name + ".pub").read_text() for p in self.main_keys))

    def start(self, n: int) -> list[subprocess.Popen[str]]:
        """Start ``n`` more daemons and wait until each says where it listens."""
        new = []
        for _ in range(n):
            i = len(self.procs)
            key = self.root / f"worker{i}.key"
            pair = _keys.generate()
            _keys.write(key, pair)
            proc = subprocess.Popen(
                [sys.executable, "-m", "distrib", "worker", "--listen", "127.0.0.1:0",
                 "--threads", "1", "--name", f"w{i}", "--cache-dir", str(self.root / f"cache{i}"),
                 "--key", str(key), "--authorized-keys", str(self.root / "authorized"),
                 "--nice", "0", "--no-sandbox", "--exit-with-parent", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=open(self.root / f"worker{i}.log", "w"), text=True,
                process_group=self.pgid or 0)
            if self.pgid is None:
                self.pgid = proc.pid
            self.procs.append(proc)
            new.append((proc, pair.public))
        for i, (proc, public) in enumerate(new, len(self.procs) - len(new)):
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if " ready on " not in line:
                log = (self.root / f"worker{i}.log").read_text()[-3000:]
                raise RuntimeError(f"worker {i} did not start (exit {proc.poll()}): {log}")
            self.addresses.append(f"{line.split(' ready on ')[1].split()[0]} {public}")
        return [p for p, _ in new]

    def idle_rss(self) -> int:
        return int(statistics.median(psutil.Process(p.pid).memory_info().rss for p in self.procs))

    def cpu(self) -> float:
        """CPU seconds of the daemons and of the processes they started (alive now)."""
        total = 0.0
        for p in self.procs:
            try:
                daemon = psutil.Process(p.pid)
                for proc in [daemon, *daemon.children(recursive=True)]:
                    t = proc.cpu_times()
                    total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def env(self, main: int = 0, only: int | None = None) -> dict[str, str]:
        return {**os.environ, "DISTRIB_WORKERS": ",".join(self.addresses[:only]),
                "DISTRIB_KEY": str(self.main_keys[main]),
                "DISTRIB_CACHE_DIR": str(self.root / f"main-cache{main}")}

    def stop(self) -> None:
        if self.pgid is None:
            return
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + 30
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for proc in self.procs:
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@contextmanager
def cluster(mains: int = 1) -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="distrib-scale-") as tmp:
        root = Path(tmp)
        (root / "ws").mkdir()
        (root / "ws" / "main.py").write_text(SCRIPT)
        c = Cluster(root, mains)
        try:
            yield c
        finally:
            c.stop()


PER_WORKER = 20  # tasks per worker without --tasks: 4,000 on 200
IDLE_S = 10.0  # seconds the idle daemons' CPU is measured over
PROFILE: dict[str, str] = {}  # --profile: where the Main's I/O thread sampler writes


def main_proc(c: Cluster, args: list[str], main: int = 0, only: int | None = None,
              extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    extra = {**PROFILE, **(extra or {})} if main == 0 else extra
    return subprocess.Popen([sys.executable, "main.py", *args], cwd=c.root / "ws", text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**c.env(main, only), **(extra or {})})


def await_ready(procs: list[subprocess.Popen[str]]) -> None:
    """Wait for each Main's READY line (connected, executors warm); raise what one that
    failed said."""
    for p in procs:
        assert p.stdout is not None
        if not p.stdout.readline().startswith("READY"):
            raise RuntimeError(result(p))


def go(procs: list[subprocess.Popen[str]], counts: list[int], log: Path) -> None:
    """Tell Main i to submit ``counts[i]`` tasks (``mains`` mode), logging them to ``log``."""
    for i, p in enumerate(procs):
        assert p.stdin is not None
        p.stdin.write(f"go M{i} {counts[i]} {log}\n")
        p.stdin.flush()


def result(proc: subprocess.Popen[str], timeout: float = 3600) -> dict[str, Any]:
    """The Main's RESULT line (after what the driver read of its output line by line)."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.wait(timeout)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"the Main failed (exit {proc.returncode}):\n{err[-3000:]}")


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


# --- the three measurements ------------------------------------------------------------------


def run(sizes: list[int], given: int | None, seconds: float) -> None:
    print(f"W10: {f'{given:,}' if given else f'{PER_WORKER} x N'} x sleep({seconds:g}) on N "
          f"one-slot worker daemons ({os.cpu_count()} cores; {load()} at the start)\n")
    print("| workers | efficiency | elapsed s (ideal) | Main CPU per task | daemons' CPU per "
          "task | Main peak RSS | longest gap between results | idle daemon RSS, CPU | "
          "load after |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for n in sizes:
        tasks = given or PER_WORKER * n
        with cluster() as c:
            c.start(n)
            time.sleep(2)  # (settled: started)
            idle, cpu0 = c.idle_rss(), c.cpu()
            time.sleep(IDLE_S)
            idle_cpu = (c.cpu() - cpu0) / IDLE_S / n
            proc = main_proc(c, ["run", str(n), str(tasks), str(seconds)])
            assert proc.stdout is not None
            marks = []
            while line := proc.stdout.readline():
                if line.startswith(("START", "END")):
                    marks.append(c.cpu())
                if line.startswith("END"):
                    break
            r = result(proc)
        ideal = tasks * seconds / n
        daemons = (marks[1] - marks[0]) / tasks if len(marks) == 2 else float("nan")
        cold = "" if r["warm"] else " (never warm: no round ran all at once)"
        print(f"| {n} | **{ideal / r['elapsed']:.2f}**{cold} | {r['elapsed']:.1f} ({ideal:.1f}) | "
              f"{r['cpu'] / tasks * 1e3:.2f} ms | {daemons * 1e3:.1f} ms | "
              f"{r['peak_rss'] / 1e6:.0f} MB | {r['gap']:.2f} s | {idle / 1e6:.0f} MB, "
              f"{idle_cpu:.2%} of a core | {load()} |", flush=True)


def burst(base: int, more: int, within: float, tasks: int, seconds: float) -> None:
    with cluster() as c:
        c.start(base)
        stopped = c.start(more)
        for p in stopped:
            p.send_signal(signal.SIGSTOP)
        proc = main_proc(c, ["burst", str(base), str(tasks), str(seconds), str(more)])
        assert proc.stdout is not None
        while (line := proc.stdout.readline()) and not line.startswith("SUBMITTED"):
            pass
        t_burst = time.monotonic()
        for i, p in enumerate(stopped):
            time.sleep(max(0.0, t_burst + within * i / more - time.monotonic()))
            p.send_signal(signal.SIGCONT)
        r = result(proc)
    t0, times = r["t0"], r["times"]
    gaps = [(b - a, a) for a, b in zip([t0] + times, times)]
    end = t0 + within + (r["all_joined"] or within)
    during = max((g for g, at in gaps if at <= end), default=0.0)
    after = max((g for g, at in gaps if at > end), default=0.0)
    print(f"burst: {more} workers resume within {within:g} s and join a Main running "
          f"{tasks:,} x sleep({seconds:g}) on {base} ({load()})\n")
    print("| all joined after | longest gap while they join | longest gap after | results "
          "| the Main's longest turn: wall | its CPU |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    joined = f"{r['all_joined']:.1f} s" if r["all_joined"] is not None else "never"
    print(f"| {joined} | **{during:.2f} s** | {after:.2f} s | {len(times)} "
          f"| {r['turn_wall'] * 1e3:.0f} ms | **{r['turn_cpu'] * 1e3:.0f} ms** |")
    for stack in r["stalls"]:  # (where the I/O thread was in turns over half a second)
        print(f"\nA turn past 0.5 s, at:\n\n```\n{stack}```")


def mains(workers: int, count: int, tasks: int, seconds: float, keep: str | None = None,
          same_context: bool = False) -> None:
    with cluster(count) as c:
        c.start(workers)
        log = c.root / "runs.log"
        procs, counts = [], []
        for i in range(count):
            # The first Main submits half as much: it leaves while the others still run.
            n = tasks // 2 if i == 0 else tasks
            procs.append(main_proc(c, ["mains", str(workers), str(tasks), str(seconds)], i,
                                   extra={} if same_context else {"MAIN_CONTEXT": f"M{i}"}))
            counts.append(n)
        await_ready(procs)
        started = time.time()
        go(procs, counts, log)
        for p in procs:
            result(p)
        if keep:
            Path(keep).write_text(log.read_text())
        print(report_mains(log.read_text(), workers, count, started))


def shares(runs: list[tuple[str, float, float]], names: list[str],
           since: float | None = None) -> tuple[dict[str, float], float, float]:
    """Each Main's share of the slot-seconds of ``runs`` (Main, start, end) while all want
    more: from ``since`` (when all were told to submit; None: the last Main's first start)
    to the first Main's last end (``lo``, ``hi``); returned with ``lo`` and ``hi``.

    From the last Main's first start, a window cuts the first round of turns short: the Mains
    whose tasks came first to idle workers started there at once, before it."""
    first = {n: min(s for w, s, _ in runs if w == n) for n in names}
    last = {n: max(e for w, _, e in runs if w == n) for n in names}
    lo, hi = max(first.values()) if since is None else since, min(last.values())
    held = dict.fromkeys(names, 0.0)
    for who, s, e in runs:
        held[who] += max(0.0, min(e, hi) - max(s, lo))
    total = sum(held.values())
    return {n: held[n] / total for n in names}, lo, hi


def report_mains(text: str, workers: int, count: int, since: float | None = None) -> str:
    rows = [line.split() for line in text.splitlines()]
    runs = [(who, float(s), float(e)) for who, s, e, *_ in rows]
    names = [f"M{i}" for i in range(count)]
    last = {n: max(e for w, _, e in runs if w == n) for n in names}
    share, lo, hi = shares(runs, names, since)
    worst = max(abs(s * count - 1) for s in share.values())
    late, late_lo, _ = shares(runs, names)
    late_worst = max(abs(s * count - 1) for s in late.values())
    lines = [f"{count} Mains on {workers} one-slot workers ({load()}): share of the slot-seconds "
             f"from the start to {hi - lo:.1f} s (fair: {1 / count:.3f}); worst off by "
             f"**{worst:.1%}** (from the last Main's first start, {late_lo - lo:.1f} s: "
             f"{late_worst:.1%})", "", "| Main | share | from the last first start |",
             "| --- | ---: | ---: |"]
    lines += [f"| {n} | {share[n]:.3f} | {late[n]:.3f} |" for n in names]
    # The first Main left at last["M0"]: how long until the others hold every slot again.
    gone = last["M0"]
    others = [(s, e) for w, s, e in runs if w != "M0"]
    for step in range(1, 101):
        t = gone + step * 0.05
        busy = sum(1 for s, e in others if s <= t < e)
        if busy >= workers * 0.95:
            lines.append(f"\nM0 left at {gone - lo:.1f} s; the others held 95 % of the slots "
                         f"{step * 0.05:.2f} s later")
            break
    else:
        lines.append(f"\nM0 left at {gone - lo:.1f} s; the others never held 95 % of the "
                     "slots within 5 s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("what", choices=("run", "burst", "mains"))
    parser.add_argument("--workers", default=None)
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--base", type=int, default=10)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--within", type=float, default=5.0)
    parser.add_argument("--mains", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--same-context", action="store_true",
                        help="mains: the Mains' contexts alike (one executor environment per "
                        "worker for all; else one each, as different scripts have)")
    parser.add_argument("--log", default=None, metavar="FILE",
                        help="mains: keep the tasks' log (Main, start, end, worker) in FILE")
    parser.add_argument("--profile", default=None, metavar="FILE",
                        help="sample the (first) Main's I/O thread; its profile goes to FILE")
    a = parser.parse_args()
    if a.profile:
        PROFILE["PROFILE"] = str(Path(a.profile).resolve())
    if a.what == "run":
        sizes = [int(x) for x in (a.workers or ("4,10" if a.quick else "10,100,200")).split(",")]
        run(sizes, a.tasks, a.seconds)
    elif a.what == "burst":
        more = 10 if a.quick else a.burst
        burst(2 if a.quick else a.base, more, a.within, a.tasks or (20 * (2 + more)), a.seconds)
    else:
        workers = int(a.workers or (6 if a.quick else 100))
        count = 3 if a.quick else a.mains
        # (ten rounds of the Mains on each worker: the shares are measured over rounds, and
        # the first Main, leaving halfway, ends the window after five)
        mains(workers, count, a.tasks or (10 * workers // count * 10), a.seconds, a.log,
              a.same_context)


if __name__ == "__main__":
    main()

"""``distrib.Slurm``: a Main's workers as Slurm batch jobs whose tasks dial it back.

    prepare (before the session):  a private folder (mode 700) under the cache folder; this
        Main's key (made if none is set), its listening address (every interface, a free port,
        unless ``listen`` is set) and a file of authorized worker keys of the launcher's own
    start (the Main listens):      the watchdog process; the first jobs: per job a key pair
        (secret file of mode 600 in the folder, which the compute nodes read from the shared
        home) authorized before ``sbatch``; each task runs ``distrib worker --connect``
    a thread, every ``poll`` s:     ``squeue``: a job pending past ``start_timeout`` is
        cancelled, an ended one forgotten (its key unauthorized), each said in one line naming
        it; adaptive (``max_jobs``): submit or cancel as ``_adapt`` says
    close (the session ends):      the watchdog cancels what is left and removes the folder;
        it does the same if the Main is killed, since its input then closes
"""

from __future__ import annotations

import itertools
import logging
import os
import shlex
import shutil
import socket
import sys
import threading
from time import monotonic
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from msgspec import structs

from distrib._errors import ConfigError, LaunchError
from distrib.launch import _jobs, _records
from distrib.launch._adapt import Load, change

if TYPE_CHECKING:  # (`import distrib` names Slurm: executors of another Python have no zmq)
    from distrib import _config

log = logging.getLogger("distrib")

EARLY = 60.0  # seconds: a job that ends sooner after it started failed, likely
BACKOFF, BACKOFF_MAX = 10.0, 600.0  # seconds submissions wait after such a job (doubling)


@dataclass(eq=False)
class _Job:
    number: int  # (its key file's)
    public_key: str
    submitted: float
    state: str = "PENDING"
    started: float | None = None  # when squeue first said it runs


class Slurm:
    """Workers for this Main as Slurm jobs: ``nodes`` nodes a job, a worker a node with
    ``cpus_per_task`` slots, for ``time`` (Slurm's ``--time``).

    ``jobs`` jobs are submitted at the start; or, with ``max_jobs``, as many as the waiting
    tasks want between ``min_jobs`` and ``max_jobs``, shrinking to ``min_jobs`` after
    ``idle_timeout`` seconds without tasks. A job still pending after ``start_timeout``
    seconds is cancelled. ``main_host``: the name or address compute nodes reach this
    machine at (default: its host name). ``sbatch_args``: more options for ``sbatch``;
    ``worker_args``: more for ``distrib worker``. A worker that has not reached this Main for
    ``exit_without_main`` seconds stops, and its job with it (None: it waits).
    """

    def __init__(self, nodes: int = 1, cpus_per_task: int = 1, time: str = "1:00:00", *,
                 partition: str | None = None, account: str | None = None,
                 sbatch_args: Sequence[str] = (), jobs: int = 1, min_jobs: int = 0,
                 max_jobs: int | None = None, idle_timeout: float = 60.0,
                 start_timeout: float = 600.0, main_host: str | None = None,
                 worker_args: Sequence[str] = (), poll: float = 2.0,
                 exit_without_main: float | None = 120.0) -> None:
        for name, value in (("nodes", nodes), ("cpus_per_task", cpus_per_task), ("jobs", jobs)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"Slurm({name}={value!r}): expected a whole number, 1 or more")
        if max_jobs is not None and not (0 <= min_jobs <= max_jobs and max_jobs >= 1):
            raise ConfigError(f"Slurm(min_jobs={min_jobs!r}, max_jobs={max_jobs!r}): expected "
                              "0 <= min_jobs <= max_jobs, max_jobs 1 or more")
        for name, seconds in (("idle_timeout", idle_timeout), ("start_timeout", start_timeout),
                              ("poll", poll), ("exit_without_main", exit_without_main or 1)):
            if not seconds > 0:
                raise ConfigError(f"Slurm({name}={seconds!r}): expected seconds, more than 0")
        self.nodes, self.cpus_per_task, self.time = nodes, cpus_per_task, time
        self.partition, self.account = partition, account
        self.sbatch_args, self.worker_args = list(sbatch_args), list(worker_args)
        self.jobs, self.min_jobs, self.max_jobs = jobs, min_jobs, max_jobs
        self.idle_timeout, self.start_timeout, self.poll = idle_timeout, start_timeout, poll
        self.main_host = main_host
        self.exit_without_main = exit_without_main
        self.name = f"distrib-{os.urandom(3).hex()}"  # the jobs' name in squeue
        self.folder: Path | None = None
        self._main_key = ""
        self._authorized: Path | None = None
        self._address = ""
        self._load: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)
        self._watchdog: _jobs.Watchdog | None = None
        self._live: dict[str, _Job] = {}  # job id -> job, submitted and not known ended
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_tasks = monotonic()
        self._refused_until = 0.0  # (adaptive) no job is submitted before then
        self._record: _records.Record | None = None  # what `distrib status` shows of it
        self._backoff = 0.0  # how long the next job that ends early holds submissions
        self._closed = False

    @property
    def address(self) -> str:
        """Where its workers dial this Main ("" before it starts)."""
        return self._address

    @property
    def job_ids(self) -> list[str]:
        """The jobs submitted and not known to have ended."""
        with self._lock:
            return list(self._live)

    # --- prepared, started, closed (``_cluster``) -------------------------------------------

    def prepare(self, settings: _config.Settings) -> _config.Settings:
        from distrib.wire import _keys

        if self.folder is not None:
            raise ConfigError("this distrib.Slurm was used by another session; make a new one")
        self._record = _records.Record(settings.cache_dir, "slurm")
        top = settings.cache_dir / "slurm"
        top.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = top / self.name
        self.folder.mkdir(mode=0o700)
        key = settings.key or _keys.generate()
        self._main_key = key.public
        self._authorized = self.folder / "authorized-workers"
        given = ""
        if settings.authorized_workers is not None:  # (the user's own dialling workers too)
            _keys.read_authorized(settings.authorized_workers)
            given = settings.authorized_workers.read_text()
        self._authorized.write_text(given)
        return structs.replace(settings, key=key, listen=settings.listen or "0.0.0.0:0",
                               authorized_workers=self._authorized)

    def start(self, listening: str, load: Callable[[], tuple[int, int, int]]) -> None:
        assert self.folder is not None
        host, _, port = listening.removeprefix("tcp://").rpartition(":")
        if self.main_host is None and host.strip("[]") in ("0.0.0.0", "::", "*", ""):
            host = socket.gethostname()
        self._address = f"{self.main_host or host}:{port}"
        self._load = load
        self._watchdog = _jobs.Watchdog(self.folder, self.name)
        for _ in range(self.min_jobs if self.max_jobs is not None else self.jobs):
            self._submit()
        self._thread = threading.Thread(target=self._watch, name="distrib-slurm", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._record is not None:
            self._record.remove()
        if self._watchdog is not None:
            self._watchdog.close()
        elif self.folder is not None:  # (never started: no job to cancel)
            shutil.rmtree(self.folder, ignore_errors=True)

    # --- jobs ---------------------------------------------------------------------------------

    @property
    def slots_per_job(self) -> int:
        return self.nodes * self.cpus_per_task

    def _submit(self) -> str:
        from distrib.wire import _keys

        assert self.folder is not None and self._watchdog is not None
        number = next(self._numbers)
        key_file = self.folder / f"job-{number}.key"
        pair = _keys.generate()
        _keys.write(key_file, pair, f"{self.name} job {number}")
        self._authorize(pair.public, f"{self.name}-job-{number}")
        script = self.folder / f"job-{number}.sh"
        script.write_text(self._script(key_file))
        options = [f"--nodes={self.nodes}", "--ntasks-per-node=1",
                   f"--cpus-per-task={self.cpus_per_task}", f"--time={self.time}",
                   f"--output={self.folder}/job-%j.out"]
        options += [f"--partition={self.partition}"] * (self.partition is not None)
        options += [f"--account={self.account}"] * (self.account is not None)
        self._watchdog.submitting()  # (killed before it hears the id: it cancels by name)
        try:
            job_id = _jobs.submit(script, options + self.sbatch_args, self.name)
        except LaunchError:
            self._unauthorize(pair.public)
            raise
        self._watchdog.hold(job_id)
        with self._lock:
            self._live[job_id] = _Job(number, pair.public, monotonic())
        self._publish()
        log.info("Slurm job %s (%s) submitted: %d node(s), %d CPU(s) a worker; its workers "
                 "dial %s", job_id, self.name, self.nodes, self.cpus_per_task, self._address)
        return job_id

    def _script(self, key_file: Path) -> str:
        assert self.folder is not None
        task = "$SLURM_JOB_ID.$SLURM_PROCID"
        worker = " ".join([
            shlex.quote(sys.executable), "-m", "distrib", "worker",
            "--connect", shlex.quote(self._address), "--main-key", shlex.quote(self._main_key),
            "--key", shlex.quote(str(key_file)), "--threads", str(self.cpus_per_task),
            "--listen", "127.0.0.1:0", "--name", f'"slurm-{task}"',
            "--cache-dir", f'{shlex.quote(str(self.folder))}/"cache-{task}"',
            *([] if self.exit_without_main is None
              else ["--exit-without-main", str(self.exit_without_main)]),
            *map(shlex.quote, self.worker_args)])
        return ("#!/bin/sh\n"
                f"# distrib workers that dial their Main at {self._address}, one a task\n"
                f"exec srun /bin/sh -c {shlex.quote('exec ' + worker)}\n")

    def _authorize(self, public: str, comment: str) -> None:
        assert self._authorized is not None
        self._rewrite(self._authorized.read_text() + f"{public} {comment}\n")

    def _unauthorize(self, public: str) -> None:
        assert self._authorized is not None
        lines = self._authorized.read_text().splitlines(keepends=True)
        self._rewrite("".join(x for x in lines if not x.startswith(public)))

    def _rewrite(self, text: str) -> None:
        """Replace the authorized workers file whole: the Main never reads half of it."""
        assert self._authorized is not None
        new = self._authorized.with_name(self._authorized.name + ".new")
        new.write_text(text)
        os.replace(new, self._authorized)

    def _publish(self) -> None:
        """Say the jobs and their states where `distrib status` reads them."""
        if self._record is not None:
            with self._lock:
                jobs = [{"where": f"job {job_id} ({self.name})", "state": job.state.lower()}
                        for job_id, job in self._live.items()]
            self._record.write(jobs)

    def _ended(self, job_id: str) -> None:
        """Forget a job that is gone (its key no longer opens this Main)."""
        with self._lock:
            job = self._live.pop(job_id, None)
        self._publish()
        if job is not None:
            self._unauthorize(job.public_key)
            if self._watchdog is not None:
                self._watchdog.forget(job_id)

    def _cancel(self, job_ids: list[str]) -> None:
        _jobs.cancel(job_ids, self.name)
        for job_id in job_ids:
            self._ended(job_id)

    # --- the watching thread ------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self._tick(monotonic())
            except Exception as exc:  # (a surprise must not end the watching)
                log.warning("Slurm jobs %s: %s", self.name, exc)

    def _ended_itself(self, job_id: str, job: _Job, now: float) -> None:
        """A job gone without this Main cancelling it; one that ended soon after it
        started (its workers could not start, say) holds submissions for a while, doubled
        each time, so that an adaptive launcher does not submit failing jobs in a loop."""
        assert self.folder is not None
        early = job.started is None or now - job.started < EARLY
        held = ""
        if early and self.max_jobs is not None:
            self._backoff = min(max(2 * self._backoff, BACKOFF), BACKOFF_MAX)
            self._refused_until = now + self._backoff
            held = f"; no job is submitted for {self._backoff:.0f} s"
        elif not early:
            self._backoff = 0.0
        log.warning("Slurm job %s (%s) ended (its time limit, or its workers stopped: see "
                    "%s)%s", job_id, self.name, self.folder / f"job-{job_id}.out", held)
        self._ended(job_id)

    def _tick(self, now: float) -> None:
        listed = _jobs.states(self.name)
        if listed is None:
            return
        for job_id, job in list(self._live.items()):
            if job_id not in listed:
                self._ended_itself(job_id, job, now)
                continue
            state, reason = listed[job_id]
            if state == "RUNNING" and job.started is None:
                job.started = now
            if state != job.state:
                job.state = state
                self._publish()
            if state == "PENDING" and now - job.submitted > self.start_timeout:
                log.warning("Slurm job %s (%s) did not start within %.0f s (pending: %s); "
                            "cancelled it", job_id, self.name, self.start_timeout, reason)
                self._cancel([job_id])
        if self.max_jobs is None or self._stop.is_set():
            return
        load = Load(*self._load())
        if load.tasks:
            self._last_tasks = now
        delta = change(load, len(self._live), self.slots_per_job, now - self._last_tasks,
                       self.min_jobs, self.max_jobs, self.idle_timeout)
        if delta > 0 and now >= self._refused_until:
            for _ in range(delta):
                try:
                    self._submit()
                except LaunchError as exc:
                    log.warning("%s (tried again in %.0f s)", exc, self.idle_timeout)
                    self._refused_until = now + self.idle_timeout
                    break
        elif delta < 0:
            # Pending jobs first, then the newest: the cluster is idle, none runs a task.
            order = sorted(self._live, key=lambda j: (self._live[j].state != "PENDING",
                                                      -self._live[j].number))
            log.info("Slurm jobs %s: idle for %.0f s, cancelling %d job(s)", self.name,
                     now - self._last_tasks, -delta)
            self._cancel(order[:-delta])

"""How many batch jobs a Main's load wants (pure: figures in, a change of jobs out).

As dask-jobqueue's ``adapt()``: grow when tasks wait and the slots of the jobs already
submitted (connected or still coming) cannot take them, up to ``max_jobs``; shrink to
``min_jobs`` once no task has been seen for ``idle_after`` seconds. Shrinking only a whole idle
cluster never cancels a job that runs a task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Load:
    """The Main's figures: slots busy with its tasks, slots its workers offer, and its tasks
    (waiting here or on workers, and running)."""

    busy: int = 0
    offered: int = 0
    tasks: int = 0


def change(load: Load, jobs: int, slots_per_job: int, idle_for: float, min_jobs: int,
           max_jobs: int, idle_after: float) -> int:
    """Jobs to submit (> 0) or to cancel (< 0) now, given ``jobs`` submitted and alive."""
    if jobs < min_jobs:
        return min_jobs - jobs
    waiting = max(0, load.tasks - load.busy)
    free = max(0, load.offered - load.busy)
    coming = max(0, jobs * slots_per_job - load.offered)  # slots of jobs not connected yet
    short = waiting - free - coming
    if short > 0 and jobs < max_jobs:
        return min(math.ceil(short / slots_per_job), max_jobs - jobs)
    if load.tasks == 0 and idle_for >= idle_after and jobs > min_jobs:
        return min_jobs - jobs
    return 0

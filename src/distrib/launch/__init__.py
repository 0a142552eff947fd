"""Launchers: start workers that dial their Main back, on clusters the Main's user can reach.

``Slurm`` (``_slurm``) submits batch jobs whose tasks each run ``distrib worker --connect``;
``_jobs`` speaks to Slurm's commands, ``_adapt`` decides how many jobs a load wants (pure),
``_watchdog`` is the process that cancels the jobs when their Main is gone. The Main never
imports this package: ``init(cluster=...)`` hands the session a ``_config.Launcher``.
"""

from distrib.launch._slurm import Slurm

__all__ = ["Slurm"]

"""Launchers: start workers that dial their Main back, one module per kind.

``SSH`` (``_ssh``) is given a ``Target`` (the Main's loopback port, its public key, its
authorized workers file, its cache) and returns a launch whose ``stop()`` ends what it started.
``Slurm`` (``_slurm``) submits batch jobs whose tasks each run ``distrib worker --connect``;
``_jobs`` speaks to Slurm's commands, ``_adapt`` decides how many jobs a load wants (pure),
``_watchdog`` is the process that cancels the jobs when their Main is gone. ``_k8s`` writes
manifests of workers for a Kubernetes cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distrib._errors import ConfigError
from distrib.launch._slurm import Slurm
from distrib.launch._target import Target

if TYPE_CHECKING:
    from distrib.launch._ssh import SSHLaunch

__all__ = ["SSH", "Slurm", "Target"]


@dataclass(frozen=True)
class SSH:
    """Workers on SSH hosts, for ``distrib.init(cluster=distrib.SSH([...]))``.

    ``hosts``: as ``ssh`` takes them (``user@host``, ``host:port``, names from
    ``~/.ssh/config``). ``threads``: slots per worker (default: the host's cores).
    ``ssh_config``: a config file for ``ssh -F`` (default: the user's). ``ssh_options``: more
    arguments for ``ssh``. ``worker_args``: more flags for ``distrib worker`` there (e.g.
    ``["--no-sandbox"]``). ``timeout``: seconds each host has to get its worker ready.
    """

    hosts: Sequence[str]
    threads: int | None = None
    ssh_config: str | None = None
    ssh_options: Sequence[str] = ()
    worker_args: Sequence[str] = ()
    timeout: float = 300.0

    def __post_init__(self) -> None:
        if isinstance(self.hosts, str) or not self.hosts \
                or not all(isinstance(h, str) and h for h in self.hosts):
            raise ConfigError(f"SSH(hosts=...): a list of host names, got {self.hosts!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"SSH(threads=...): a positive number, got {self.threads!r}")

    def launch(self, target: Target, mode: str = "session") -> SSHLaunch:
        """Start a worker on each host; return once each is ready or has failed. ``mode``
        "persist": lasting workers that dial the Main's own address (its port must be open
        to the hosts); "down": stop those."""
        from distrib.launch._ssh import SSHLaunch  # (imported when used: `import distrib`)

        launch = SSHLaunch(self.hosts, self.threads, self.ssh_config, self.ssh_options,
                           self.worker_args, self.timeout, mode)
        launch.start(target)
        return launch

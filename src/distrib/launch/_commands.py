"""``distrib up slurm``, added to ``distrib up`` by ``_cli_setup``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click
import platformdirs

from distrib._errors import DistribError


@click.command("slurm")
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Nodes of the job: a worker on each.")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPUs of each worker (its slots).")
@click.option("--time", "time_limit", default="1:00:00", show_default=True,
              help="The job's time limit (sbatch --time).")
@click.option("--partition", default=None, help="The partition to submit to.")
@click.option("--account", default=None, help="The account to charge.")
@click.option("--sbatch-arg", multiple=True, metavar="ARG",
              help="Another option for sbatch, e.g. --sbatch-arg=--mem=16G. Repeatable.")
@click.option("--listen", default="0.0.0.0:7788", show_default=True, metavar="HOST:PORT",
              help="Where the Mains started meanwhile listen for the job's workers.")
@click.option("--main-host", default=None, metavar="HOST",
              help="The name or address compute nodes reach this machine at (default: its "
                   "host name).")
@click.option("--start-timeout", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True, help="Seconds the job may wait to start before it is "
                                      "cancelled.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Folder of the job's keys and scripts (default: the user's cache folder).")
def up_slurm(nodes: int, cpus_per_task: int, time_limit: str, partition: str | None,
             account: str | None, sbatch_arg: tuple[str, ...], listen: str,
             main_host: str | None, start_timeout: float, cache_dir: Path | None) -> None:
    """Submit a Slurm job of workers and hold it until Ctrl-C: Mains started meanwhile
    (after `. ~/.cache/distrib/slurm/up.env`) use its workers, which dial them."""
    from distrib.launch._slurm import Slurm  # (here: `distrib worker` starts without it)
    from distrib.launch._up import up as hold

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="distrib: %(message)s")
    cache = (cache_dir or Path(os.environ.get("DISTRIB_CACHE_DIR")
                               or platformdirs.user_cache_dir("distrib"))).absolute()
    try:
        slurm = Slurm(nodes, cpus_per_task, time_limit, partition=partition, account=account,
                      sbatch_args=sbatch_arg, start_timeout=start_timeout,
                      main_host=main_host, exit_without_main=None)
        sys.exit(hold(slurm, listen, cache, lambda line: click.echo(line, err=True)))
    except DistribError as exc:
        raise click.ClickException(str(exc)) from None

"""The ``distrib`` command. Nothing in the package imports this module."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path

import click
import platformdirs

from distrib._config import endpoint


def _is_loopback(listen: str) -> bool:
    if listen.startswith("ipc://"):
        return True
    host = listen.removeprefix("tcp://").rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.group()
@click.version_option(package_name="distrib")
def main() -> None:
    """distrib: spread the calls of ordinary Python functions over many machines."""


@main.command()
@click.option("--listen", default="127.0.0.1:7070", show_default=True,
              help="host:port to bind (port 0 picks one), or ipc:///path.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Slots offered (default: the number of cores).")
@click.option("--name", default=None, help="Name shown to Mains (default: host name and port).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Where blobs and environments are kept (default: the user cache folder).")
@click.option("--heartbeat", type=float, default=1.0, show_default=True,
              help="Seconds between heartbeats to each Main.")
@click.option("--lost-after", type=float, default=10.0, show_default=True,
              help="Seconds of silence after which a Main is dropped.")
@click.option("--exit-with-parent", type=int, default=None, hidden=True)
@click.option("-v", "--verbose", is_flag=True, help="Log every connection and environment.")
def worker(listen: str, threads: int | None, name: str | None, cache_dir: Path | None,
           heartbeat: float, lost_after: float, exit_with_parent: int | None,
           verbose: bool) -> None:
    """Run a worker daemon that serves Mains' tasks."""
    from distrib.worker._daemon import Daemon

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s distrib worker: %(message)s", datefmt="%H:%M:%S")
    try:
        address = endpoint(listen)
    except Exception as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    if not _is_loopback(address):
        raise click.UsageError(
            f"refusing to listen on {listen}: this version serves loopback only "
            "(127.0.0.1, localhost, ipc://); remote workers need keys, not yet supported")
    slots = threads or os.cpu_count() or 1
    cache = cache_dir or Path(os.environ.get("DISTRIB_CACHE_DIR")
                              or platformdirs.user_cache_dir("distrib")) / "worker"
    daemon = Daemon(address, slots, name or "", cache, heartbeat, lost_after, exit_with_parent)
    if not name:
        daemon.name = f"{socket.gethostname()}:{daemon.address.rsplit(':', 1)[-1].rsplit('/', 1)[-1]}"
    click.echo(f"distrib worker {daemon.name} ready on {daemon.address} with {slots} slots",
               nl=True)
    sys.stdout.flush()
    daemon.run()

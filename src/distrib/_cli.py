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
from distrib._errors import DistribError
from distrib.wire import _keys


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
@click.option("--key", "key_file", type=click.Path(path_type=Path), default=None,
              help="This worker's secret key file (from `distrib keygen`): turns on CURVE.")
@click.option("--authorized-keys", type=click.Path(path_type=Path), default=None,
              help="File of Mains' public keys allowed to use this worker (one per line).")
@click.option("--insecure", is_flag=True,
              help="Allow a non-loopback address without keys: anyone reaching it runs code.")
@click.option("--exit-with-parent", type=int, default=None, hidden=True)
@click.option("-v", "--verbose", is_flag=True, help="Log every connection and environment.")
def worker(listen: str, threads: int | None, name: str | None, cache_dir: Path | None,
           heartbeat: float, lost_after: float, key_file: Path | None,
           authorized_keys: Path | None, insecure: bool, exit_with_parent: int | None,
           verbose: bool) -> None:
    """Run a worker daemon that serves Mains' tasks."""
    from distrib.worker._daemon import Daemon

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s distrib worker: %(message)s", datefmt="%H:%M:%S")
    try:
        address = endpoint(listen)
    except Exception as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    if authorized_keys is not None and key_file is None:
        raise click.UsageError("--authorized-keys needs --key (the worker's own secret key)")
    if key_file is not None and authorized_keys is None and not insecure:
        raise click.UsageError(
            "--key without --authorized-keys would serve any Main; list the Mains' public keys "
            "in a file and pass --authorized-keys FILE (or --insecure to accept any Main)")
    if not _is_loopback(address) and key_file is None and not insecure:
        raise click.UsageError(
            f"refusing to listen on {listen} without keys: anyone who reaches it could run code "
            "as you. Make keys with `distrib keygen worker.key` (and each Main with `distrib "
            "keygen main.key`), put the Mains' .pub lines in a file, and start with --key "
            "worker.key --authorized-keys FILE. Or pass --insecure on a network you trust.")
    try:
        key = _keys.load_secret(key_file) if key_file is not None else None
        if authorized_keys is not None:
            _keys.read_authorized(authorized_keys)
    except DistribError as exc:
        raise click.UsageError(str(exc)) from None
    if insecure and (key is None or authorized_keys is None):
        logging.getLogger("distrib.worker").warning(
            "INSECURE: serving %s Main that connects to %s; anyone who reaches it can run code "
            "as this user", "any" if key is None else "any key-holding", listen)
    slots = threads or os.cpu_count() or 1
    cache = cache_dir or Path(os.environ.get("DISTRIB_CACHE_DIR")
                              or platformdirs.user_cache_dir("distrib")) / "worker"
    daemon = Daemon(address, slots, name or "", cache, heartbeat, lost_after, exit_with_parent,
                    key, authorized_keys)
    if not name:
        daemon.name = f"{socket.gethostname()}:{daemon.address.rsplit(':', 1)[-1].rsplit('/', 1)[-1]}"
    public = f", public key {key.public}" if key else ""
    click.echo(f"distrib worker {daemon.name} ready on {daemon.address} with {slots} slots"
               f"{public}")
    sys.stdout.flush()
    daemon.run()


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--comment", default=None, help="Text after the public key (default: user@host).")
def keygen(path: Path, comment: str | None) -> None:
    """Write a key pair: the secret key to PATH (owner-only), the public key to PATH.pub."""
    pair = _keys.generate()
    if comment is None:
        comment = f"{os.environ.get('USER', 'user')}@{socket.gethostname()}"
    try:
        _keys.write(path, pair, comment)
    except DistribError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"secret key: {path}\npublic key: {path}.pub\n{pair.public}")

"""Set-up commands: ``distrib keygen`` (key pairs), ``distrib up`` and ``distrib down``
(workers started on other machines for the Main configured here). Only ``_cli`` imports this
module."""

from __future__ import annotations

import getpass
import json
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from distrib._errors import ConfigError, DistribError
from distrib.launch._commands import up_slurm
from distrib.wire import _keys

if TYPE_CHECKING:
    from distrib.launch import SSH, Target
    from distrib.launch._ssh import SSHLaunch


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--comment", default=None, help="Text after the public key (default: user@host).")
def keygen(path: Path, comment: str | None) -> None:
    """Write a key pair: the secret key to PATH (owner-only), the public key to PATH.pub."""
    pair = _keys.generate()
    if comment is None:
        comment = f"{getpass.getuser()}@{socket.gethostname()}"
    try:
        _keys.write(path, pair, comment)
    except DistribError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"secret key: {path}\npublic key: {path}.pub\n{pair.public}")


@click.group()
def up() -> None:
    """Start workers elsewhere that dial this machine's Main (`distrib up ssh`, `distrib up
    slurm`, or manifests for a Kubernetes cluster: `distrib up k8s --print`)."""


up.add_command(up_slurm)


@up.command("ssh")
@click.argument("hosts", nargs=-1, required=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Slots per worker (default: each host's cores).")
@click.option("--ssh-config", default=None, help="A config file for `ssh -F`.")
@click.option("--package", "packages", multiple=True, metavar="NAME",
              help="An installed package to send as wheels too, for hosts with no package "
                   "index (repeatable).")
@click.option("--worker-arg", "worker_args", multiple=True, metavar="FLAG",
              help="A flag for `distrib worker` there, e.g. --worker-arg=--no-sandbox.")
@click.option("--persist", is_flag=True,
              help="Start lasting workers instead, which dial the Main's own address (its "
                   "listen port must be open to the hosts) and run until `distrib down`; "
                   "this command then returns.")
def up_ssh(hosts: tuple[str, ...], threads: int | None, ssh_config: str | None,
           packages: tuple[str, ...], worker_args: tuple[str, ...], persist: bool) -> None:
    """Start a worker on each SSH host (user@host, host:port, or a name from ~/.ssh/config)
    for the Main configured here: its [main] listen, key and authorized_workers (where the
    workers' keys are added). They dial it through the session's reverse tunnel and stay up,
    serving each run of the script, until this command ends (Ctrl-C); with --persist, until
    `distrib down`."""
    from distrib.launch import SSH

    target, cache = _target(packages)
    launch = _launch(SSH(hosts, threads, ssh_config, (), worker_args), target,
                     "persist" if persist else "session")
    if persist:
        launch.stop()  # (the sessions are over: the workers run on their own)
        record = cache / "launch" / "lasting.json"
        lasting = json.loads(record.read_text()) if record.exists() else {}
        lasting.update({h.name: ssh_config for h in launch.ready()})
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(lasting))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        launch.stop()


@up.command("k8s")
@click.option("--print", "print_", is_flag=True,
              help="Write the manifests to stdout (the only way: apply them with kubectl).")
@click.option("--main", "main_address", required=True, metavar="HOST:PORT",
              help="The Main's listening address as the pods reach it.")
@click.option("--main-key", required=True, metavar="KEY",
              help="The Main's public key, or its .pub file.")
@click.option("--image", required=True,
              help="A container image with Python and distrib installed.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Slots per worker (default: the pod's cores).")
@click.option("--name", default="distrib-workers", show_default=True)
@click.option("--namespace", default="default", show_default=True)
@click.option("--authorize", type=click.Path(path_type=Path), default=None,
              help="The Main's authorized_workers file: the workers' key is added to it.")
@click.option("--worker-arg", "worker_args", multiple=True, metavar="FLAG",
              help="More flags for `distrib worker` in each pod (repeatable).")
def up_k8s(print_: bool, main_address: str, main_key: str, image: str, replicas: int,
           threads: int | None, name: str, namespace: str, authorize: Path | None,
           worker_args: tuple[str, ...]) -> None:
    """Print a Secret and a Deployment for workers on a Kubernetes cluster that dial the Main
    at --main (it listens there: [main] listen): `distrib up k8s --print ... | kubectl apply
    -f -`. The pods share one new worker key; the Main must authorize it (--authorize)."""
    from distrib._values import endpoint
    from distrib.launch._k8s import manifests

    if not print_:
        raise click.UsageError("distrib up k8s writes manifests only: add --print, and apply "
                               "them with `kubectl apply -f -`")
    try:
        endpoint(main_address)
        key = (_keys.read_public_file(Path(main_key)) if Path(main_key).is_file()
               else _keys.check_public(main_key, "--main-key"))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    pair = _keys.generate()
    line = f"{pair.public} k8s:{namespace}/{name}\n"
    if authorize is not None:
        with authorize.open("a") as f:
            f.write(line)
        click.echo(f"added the workers' key to {authorize}", err=True)
    else:
        click.echo(f"add this line to the Main's authorized_workers file:\n{line}", err=True,
                   nl=False)
    click.echo(manifests(name, namespace, image, replicas, threads, main_address, key, pair,
                         worker_args), nl=False)


@click.command()
@click.argument("hosts", nargs=-1)
@click.option("--ssh-config", default=None,
              help="A config file for `ssh -F` (default: the one `up --persist` was given).")
def down(hosts: tuple[str, ...], ssh_config: str | None) -> None:
    """Stop the lasting workers `distrib up ssh --persist` started (on HOSTS, or on every
    host it started one on)."""
    from distrib import _config
    from distrib.launch import SSH, Target

    try:
        cache = _config.load().cache_dir
    except DistribError as exc:
        raise click.ClickException(str(exc)) from None
    record = cache / "launch" / "lasting.json"
    lasting: dict[str, str | None] = json.loads(record.read_text()) if record.exists() else {}
    names = list(hosts) or list(lasting)
    if not names:
        raise click.ClickException("no lasting workers recorded here: name the hosts")
    for config in sorted({ssh_config or lasting.get(n) or "" for n in names}):
        group = [n for n in names if (ssh_config or lasting.get(n) or "") == config]
        launch = _launch(SSH(group, ssh_config=config or None), Target(0, "", Path(), cache),
                         "down")
        launch.stop()
        for host in launch.ready():
            lasting.pop(host.name, None)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(lasting))


def _target(packages: tuple[str, ...]) -> tuple[Target, Path]:
    from distrib import _config
    from distrib.launch import Target

    try:
        settings = _config.load()
        if settings.listen is None or settings.listen.endswith(":0") \
                or settings.key is None or settings.authorized_workers is None:
            raise ConfigError(
                f"{settings.source}: `distrib up` needs the Main's [main] listen (e.g. "
                "\"127.0.0.1:7788\"), key and authorized_workers")
    except DistribError as exc:
        raise click.ClickException(str(exc)) from None
    return Target(int(settings.listen.rpartition(":")[2]), settings.key.public,
                  settings.authorized_workers, settings.cache_dir, packages), settings.cache_dir


def _launch(spec: SSH, target: Target, mode: str) -> SSHLaunch:
    """Run the launch, say each host's worker, fail if none started (each failing host has
    said why in one line)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="distrib: %(message)s")
    try:
        launch = spec.launch(target, mode)
    except DistribError as exc:
        raise click.ClickException(str(exc)) from None
    for host in launch.ready():
        click.echo(f"{host.name}: {host.ready}")
    if not launch.ready():
        launch.stop()
        raise click.ClickException("no worker stopped" if mode == "down"
                                   else "no worker started")
    return launch

"""The ``distrib`` command. Nothing in the package imports this module."""

from __future__ import annotations

import faulthandler
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import zmq

from distrib._values import endpoint, parse_size
from distrib._errors import ConfigError, DistribError
from distrib.wire import _keys
from distrib.worker import _relaying

if TYPE_CHECKING:
    from distrib.worker._ahead import Zygote


def _size(text: str, option: str) -> int:
    """Bytes in ``10G``, ``500M``, ``64K`` or ``1000``."""
    try:
        return parse_size(text, option)
    except ConfigError as exc:
        raise click.BadParameter(str(exc).removeprefix(f"{option}="), param_hint=option) \
            from None


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


class _Commands(click.Group):
    """The top-level commands; the set-up and status ones are imported when named (or
    listed): a worker daemon's start imports neither them nor the launchers they use."""

    LATER = {"keygen": "distrib._cli_setup", "up": "distrib._cli_setup",
             "down": "distrib._cli_setup", "status": "distrib._cli_status"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LATER})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LATER and cmd_name not in self.commands:
            import importlib

            self.add_command(getattr(importlib.import_module(self.LATER[cmd_name]), cmd_name))
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands)
@click.version_option(package_name="distrib")
def main() -> None:
    """distrib: spread the calls of ordinary Python functions over many machines."""


@main.group(invoke_without_command=True)
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
              help="Seconds of silence after which a Main is dropped (and one that takes "
              "nothing this worker sends, after 12 times as long).")
@click.option("--max-cache", default=None, metavar="SIZE",
              help="Most disk the cache may take, e.g. 10G or 500M (default: a quarter of the "
                   "free disk, at least 1G); least recently used environments and blobs go "
                   "first. What running tasks write counts too (they may write at least half "
                   "of it): past it, the task that wrote the most fails as TaskDiskExceeded.")
@click.option("--max-queued", default="256M", show_default=True, metavar="SIZE",
              help="Most payload bytes queued here for one Main (all Mains of one key "
                   "together); more is sent back to wait on the Main (bounds the daemon's "
                   "memory).")
@click.option("--max-objects", default="2G", show_default=True, metavar="SIZE",
              help="Most bytes of shared objects (distrib.share, large arguments passed "
                   "again) kept here for one Main (all Mains of one key together); least "
                   "recently used go first.")
@click.option("--max-objects-total", default=None, metavar="SIZE",
              help="Most bytes of shared objects kept here for all Mains together, in "
                   "/dev/shm and on disk (default: twice --max-objects); least recently used "
                   "that no task needs go first, and a call whose objects still do not fit "
                   "fails with SerializationError naming this limit.")
@click.option("--max-parked", type=click.IntRange(min=0), default=None,
              help="Most executors whose task waits for the calls it made, its slots lent to "
                   "other tasks meanwhile (default: twice the threads); at the cap a waiting "
                   "task keeps its slots.")
@click.option("--max-task-memory", default=None, metavar="SIZE",
              help="Most memory one task may use, e.g. 8G: its executor and every process "
                   "it started, together. Over it the task is stopped with its processes, "
                   "and fails as WorkerCrashed naming this limit (default: none).")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Most memory all executors, with the processes their tasks started, may "
                   "use together: over it the largest running task is stopped (default: "
                   "none).")
@click.option("--max-task-disk", default=None, metavar="SIZE",
              help="Most disk one task may write (its working folder, anywhere in its "
                   "environment, its private /tmp where it has one), e.g. 10G: over it the "
                   "task is stopped, what it wrote is dropped, and it fails as "
                   "TaskDiskExceeded naming this limit (default: none; what all tasks write "
                   "counts against --max-cache too).")
@click.option("--nice", type=click.IntRange(0, 19), default=10, show_default=True,
              help="Niceness of executors: the owner's own programs win the CPU.")
@click.option("--when-idle", type=click.Choice(["finish", "vacate"]), default=None,
              help="Lend only while the owner's own programs leave the machine idle; when they "
                   "start, queued tasks go back to their Mains and running ones finish, or are "
                   "stopped and go back too (vacate). Default: lend regardless of load.")
@click.option("--idle-load", type=click.FloatRange(0, 1, min_open=True), default=0.25,
              show_default=True,
              help="With --when-idle: the machine is idle while other programs use less than "
                   "this share of its cores.")
@click.option("--hours", default=None, metavar="RULES",
              help="Lend only at these local times, e.g. \"Mon-Fri 19:00-07:00; Sat-Sun\"; "
                   "outside them, as --when-idle says (default: finish).")
@click.option("--policy", "policy_file", type=click.Path(path_type=Path), default=None,
              help="A TOML file of these settings (threads, max_task_memory, max_memory, "
                   "max_task_disk, nice, when_idle, idle_load, hours, connect, relay), over the "
                   "flags; read again when it changes or on SIGHUP, and applied while the "
                   "worker runs.")
@click.option("--idle-executors", type=click.FloatRange(min=0), default=300.0,
              show_default=True,
              help="Seconds an executor may wait for a task before it stops (and frees its "
                   "memory).")
@click.option("--install", type=click.Choice(["never", "wheels", "any"]), default="wheels",
              show_default=True,
              help="What Mains' environments may install here: nothing, binary wheels only (no "
                   "package's build code runs on this machine), or anything.")
@click.option("--index-url", default=None, metavar="URL",
              help="Package index environments install from (default: PyPI).")
@click.option("--find-links", multiple=True, metavar="PATH_OR_URL",
              help="Also look for packages here (a folder of wheels); repeatable.")
@click.option("--no-index", is_flag=True,
              help="Use no index, only --find-links (an offline machine).")
@click.option("--python", "pythons", multiple=True, type=click.Path(path_type=Path),
              metavar="PATH",
              help="Another Python interpreter Mains' environments may use; repeatable "
                   "(installed ones are found: pyenv's, and those on the PATH).")
@click.option("--max-envs", default=None, metavar="SIZE",
              help="Most disk built Python environments may take, e.g. 20G (default: no "
                   "limit); least recently used go first.")
@click.option("--key", "key_file", type=click.Path(path_type=Path), default=None,
              help="This worker's secret key file (from `distrib keygen`): turns on CURVE.")
@click.option("--authorized-keys", type=click.Path(path_type=Path), default=None,
              help="File of Mains' public keys allowed to use this worker (one per line).")
@click.option("--connect", multiple=True, metavar="HOST:PORT",
              help="Dial a Main that listens there (its `listen` setting) and serve it, for a "
                   "worker that cannot accept connections (behind NAT). Repeatable; each needs "
                   "a --main-key, in the same order, and the worker needs --key.")
@click.option("--main-key", multiple=True, metavar="KEY",
              help="The public key (or .pub file) of the Main of each --connect: it must "
                   "prove it, or it is not served.")
@_relaying.options
@click.option("--insecure", is_flag=True,
              help="Allow a non-loopback address without keys: anyone reaching it runs code.")
@click.option("--announce", is_flag=True,
              help="Advertise this worker (and its public key) on the LAN with mDNS.")
@click.option("--announce-interface", multiple=True,
              help="Interface address to announce on (default: the listen address, or all).")
@click.option("--task-network", type=click.Choice(["none", "loopback", "all"]), default="none",
              show_default=True,
              help="What sandboxed tasks may reach: no network, this machine's services "
                   "(loopback: for now the machine's whole network, no loopback-only filter), "
                   "or all; a key's line in the authorized-keys file may say otherwise for "
                   "its Mains (network=...).")
@click.option("--no-sandbox", is_flag=True,
              help="Run tasks without a sandbox: they can read this user's files (this "
                   "worker's keys, other Mains' work) and reach the network. Needed to serve "
                   "keyed or non-loopback Mains where no sandbox can be built.")
@click.option("--exit-without-main", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS",
              help="Stop once none of the Mains of --connect has been connected for SECONDS "
                   "(a worker launched for one Main: it ends when that Main is gone).")
@click.option("--exit-with-parent", type=int, default=None, hidden=True)
@click.option("--linger", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS",
              help="Leave after this many seconds with no Main (default 0: stay).")
@click.option("--users-lock", type=click.Path(path_type=Path), default=None, hidden=True)
@click.option("-v", "--verbose", is_flag=True, help="Log every connection and environment.")
@click.pass_context
def worker(ctx: click.Context, listen: str, threads: int | None, name: str | None,
           cache_dir: Path | None,
           heartbeat: float, lost_after: float, max_cache: str | None, max_queued: str,
           max_objects: str, max_objects_total: str | None, max_parked: int | None,
           max_task_memory: str | None,
           max_memory: str | None, max_task_disk: str | None, nice: int,
           when_idle: str | None, idle_load: float, hours: str | None,
           policy_file: Path | None,
           idle_executors: float, install: str, index_url: str | None,
           find_links: tuple[str, ...], no_index: bool, pythons: tuple[Path, ...],
           max_envs: str | None,
           key_file: Path | None,
           authorized_keys: Path | None, connect: tuple[str, ...], main_key: tuple[str, ...],
           relay: str | None, relay_key: str | None, insecure: bool, announce: bool,
           announce_interface: tuple[str, ...], task_network: str, no_sandbox: bool,
           exit_without_main: float | None, exit_with_parent: int | None, linger: float,
           users_lock: Path | None,
           verbose: bool) -> None:
    """Run a worker daemon that serves Mains' tasks (or, with a command, tell a running one
    to pause, resume or drain)."""
    if ctx.invoked_subcommand is not None:
        return
    # (a daemon that stops answering: `kill -USR1 PID` writes what each of its threads does
    # to its log, and it goes on; from the start, before it says it is ready)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    from distrib.worker import _sandbox

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s distrib worker: %(message)s", datefmt="%H:%M:%S")
    # The sandbox is probed while the daemon's modules are imported and the flags checked
    # (awaited before the daemon exists, and when the command ends early)
    probe = None if no_sandbox else _sandbox.Probe()
    if probe is not None:
        ctx.call_on_close(probe.join)
    # Without a sandbox, the interpreter the first template will take is started now, to
    # import beside the daemon rather than after it (a sandbox's templates start their own;
    # a policy file may set another niceness). Ended here unless the daemon takes it.
    early: list[Zygote] = []
    if no_sandbox and policy_file is None:
        from distrib.worker import _ahead

        try:
            early.append(_ahead.Zygote(nice))
        except OSError as exc:
            logging.getLogger("distrib.worker").debug("no interpreter started ahead: %s", exc)

        def unused() -> None:
            for zygote in early:
                zygote.kill()

        ctx.call_on_close(unused)
    from distrib.worker import _policy
    from distrib.worker._daemon import Daemon
    from distrib.worker._diskwatch import POLL
    from distrib.worker._envs import EnvPolicy
    from distrib.worker._gate import read_quotas
    from distrib.worker._memory import human, why_no_cgroup
    from distrib.worker._settings import WorkerSettings

    try:
        address = endpoint(listen)
    except Exception as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    if authorized_keys is not None and key_file is None:
        raise click.UsageError("--authorized-keys needs --key (the worker's own secret key)")
    dials = _dials(connect, main_key)
    if key_file is not None and authorized_keys is None and not insecure and not dials \
            and policy_file is None:
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
            read_quotas(authorized_keys)
        flags = _policy.Policy(
            threads or os.cpu_count() or 1,
            None if max_task_memory is None else _size(max_task_memory, "--max-task-memory"),
            None if max_memory is None else _size(max_memory, "--max-memory"),
            nice, when_idle, idle_load,
            None if hours is None else _policy.Hours.parse(hours, "--hours"),
            None if max_task_disk is None else _size(max_task_disk, "--max-task-disk"),
            dials, _relaying.flags(relay, relay_key, key))
        policy = flags if policy_file is None else _policy.read(policy_file, flags)
    except DistribError as exc:
        raise click.UsageError(str(exc)) from None
    dials = policy.connect
    if exit_without_main is not None and not dials:
        raise click.UsageError("--exit-without-main needs --connect (or connect in the policy "
                               "file): it counts the time without the Mains this worker dials")
    if dials and key is None:
        raise click.UsageError("--connect (or connect in the policy file) needs --key: the "
                               "worker's own secret key, which the Main checks against its "
                               "authorized_workers")
    if key is not None and authorized_keys is None and not insecure and not dials:
        raise click.UsageError(
            "--key without --authorized-keys would serve any Main; list the Mains' public keys "
            "in a file and pass --authorized-keys FILE (or --insecure to accept any Main)")
    if insecure and (key is None or authorized_keys is None):
        logging.getLogger("distrib.worker").warning(
            "INSECURE: serving %s Main that connects to %s; anyone who reaches it can run code "
            "as this user", "any" if key is None else "any key-holding", listen)
    slots = policy.threads
    cache = _worker_cache(cache_dir)
    sandboxes = None if probe is None else probe.result()
    worker_log = logging.getLogger("distrib.worker")
    if sandboxes is None and not no_sandbox and (key_file is not None
                                                 or not _is_loopback(address)):
        raise click.UsageError(
            "no sandbox can be built here (install bubblewrap, e.g. `apt-get install "
            "bubblewrap`, or allow unprivileged user namespaces), and this worker serves "
            "remote Mains: their tasks could read its keys and other Mains' work. Pass "
            "--no-sandbox to serve them anyway")
    try:
        daemon = Daemon(WorkerSettings(
            address, policy, cache, name=name or "", heartbeat_interval=heartbeat,
            lost_after=lost_after, exit_with_parent=exit_with_parent, linger=linger,
            users_lock=users_lock, exit_without_main=exit_without_main, key=key,
            authorized=authorized_keys, idle_after=idle_executors,
            max_cache=None if max_cache is None else _size(max_cache, "--max-cache"),
            max_queued=_size(max_queued, "--max-queued"),
            env_policy=EnvPolicy(install, index_url, find_links, no_index, pythons,
                                 None if max_envs is None else _size(max_envs, "--max-envs")),
            max_objects=_size(max_objects, "--max-objects"),
            max_objects_total=None if max_objects_total is None else _size(
                max_objects_total, "--max-objects-total"), policy_file=policy_file,
            flags=flags, max_parked=max_parked, sandboxes=sandboxes,
            task_network=task_network, connect=dials))
    except zmq.ZMQError as exc:
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror}") from None
    if early:
        daemon.executors.forks.ahead.adopt(early.pop())
    if announce:
        if not address.startswith("tcp://"):
            raise click.UsageError("--announce needs a tcp address to announce")
        daemon.announce(announce_interface)
    public = f", public key {key.public}" if key else ""
    dialling = f" (dialling {', '.join(a for a, _ in dials)})" if dials else ""
    click.echo(f"distrib worker {daemon.name} ready on {daemon.address} with {slots} "
               f"slot{'s' if slots != 1 else ''}{public}{dialling}")
    sys.stdout.flush()
    # (said once listening: a worker that cannot start says that alone)
    if sandboxes is not None:
        worker_log.warning("tasks run in a sandbox built with %s; network: %s%s",
                           sandboxes.describe(), task_network,
                           " (shared with this machine: a loopback-only filter is not built "
                           "yet, so tasks can reach other hosts too)"
                           if task_network == "loopback" else "")
    elif no_sandbox:  # (a warning where remote Mains are served; the local cluster's is news)
        worker_log.log(logging.WARNING if key_file is not None or not _is_loopback(address)
                       else logging.INFO,
                       "NO SANDBOX (--no-sandbox): tasks can read this user's files and "
                       "reach the network")
    else:
        worker_log.warning("no sandbox can be built here (install bubblewrap): tasks of the "
                           "Mains of this machine run unconfined")
    worker_log.info("policy%s: %s", f" from {policy_file}" if policy_file else "",
                    policy.describe())
    if daemon.memory.limit or policy_file is not None:
        worker_log.info(
            "memory limits%s are enforced by sampling executors' memory (with every process "
            "their tasks started) every %.2f s with psutil, not by a cgroup (%s)", "".join(
                f", {flag} {human(size)}" for flag, size in (
                    ("--max-task-memory", daemon.memory.per_task),
                    ("--max-memory", daemon.memory.total)) if size) or " (none set now)",
            min(heartbeat, 0.25), why_no_cgroup())
    disk = daemon.executors.disk
    if disk is not None:
        worker_log.info(
            "what tasks write is measured every %.1f s or so: over %s a task fails, and what "
            "it wrote is dropped", POLL, " or ".join(
                f"{flag} {human(size)}" for flag, size in (
                    ("--max-task-disk", disk.limits.per_task),
                    ("--max-cache (all tasks, beside the rest of the cache)", disk.limits.total)) if size))
    daemon.run()
    # Stopped and cleaned up: end without tearing down the interpreter module by module (40 ms
    # more of every stop, which whoever stops the worker waits for).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _dials(connect: tuple[str, ...], main_key: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The Mains a worker dials: (host:port, the Main's public key), as the flags pair them."""
    from distrib.worker._policy import dial

    if len(connect) != len(main_key):
        raise click.UsageError(f"{len(connect)} --connect and {len(main_key)} --main-key: give "
                               "each --connect HOST:PORT the --main-key of the Main there")
    try:
        return tuple(dial(address, key if _keys.is_public((key.split() or [""])[0])
                          else _keys.read_public_file(Path(key)), "--connect")
                     for address, key in zip(connect, main_key))
    except DistribError as exc:
        raise click.UsageError(str(exc)) from None


def _worker_cache(cache_dir: Path | None) -> Path:
    # Absolute: executors work in folders of their own, where a relative path means another.
    if cache_dir is not None:  # (the local cluster's: platformdirs is not imported)
        return cache_dir.absolute()
    import platformdirs

    return (Path(os.environ.get("DISTRIB_CACHE_DIR") or platformdirs.user_cache_dir("distrib"))
            / "worker").absolute()


def _control_command(command: str, doc: str) -> None:
    @worker.command(command, help=doc)
    @click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
                  help="The running worker's --cache-dir (default: the user cache folder).")
    @click.option("--pid", type=int, default=None,
                  help="Which daemon, when several use that cache.")
    def run(cache_dir: Path | None, pid: int | None) -> None:
        from distrib.worker._control import send

        try:
            click.echo(send(_worker_cache(cache_dir), command, pid))
        except DistribError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"cannot reach the worker daemon: {exc}") from None


_control_command("pause", "Stop taking tasks; queued ones go back to their Mains, running ones "
                          "finish.")
_control_command("resume", "Take tasks again after a pause.")
_control_command("drain", "Stop taking tasks, hand queued ones back, let running ones finish, "
                          "then exit.")
_control_command("state", "Say whether the worker is serving, paused or draining.")
_control_command("stop", "Stop now, as SIGTERM does: running tasks are stopped.")


@main.command()
@click.option("--listen", default="0.0.0.0:7790", show_default=True,
              help="host:port to bind: the one port parties dial (port 0 picks one).")
@click.option("--key", "key_file", type=click.Path(path_type=Path), required=True,
              help="The relay's secret key (`distrib keygen relay.key`); parties are given "
                   "its .pub.")
@click.option("--authorized-keys", type=click.Path(path_type=Path), required=True,
              help="Public keys of the parties (Mains and workers) that may use the relay, "
                   "one a line; read again when it changes.")
@click.option("--max-splices", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most splices (relayed connections) one key may have at once.")
@click.option("--max-rate", default=None, metavar="SIZE",
              help="Most bytes a second the parties of one key may send through the relay, "
                   "over all their splices, e.g. 50M (default: no cap).")
@click.option("-v", "--verbose", is_flag=True, help="Log every registration and splice.")
def relay(listen: str, key_file: Path, authorized_keys: Path, max_splices: int,
          max_rate: str | None, verbose: bool) -> None:
    """Run a relay: Mains and workers that cannot accept connections dial it and are spliced
    to each other by public key; their CURVE sessions run through it end to end."""
    import asyncio

    from distrib.relay._daemon import RelaySettings, run

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s distrib relay: %(message)s", datefmt="%H:%M:%S")
    host, _, port = listen.removeprefix("tcp://").rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{listen!r}: expected host:port", param_hint="--listen")
    try:
        key = _keys.load_secret(key_file)
        _keys.read_authorized(authorized_keys)
        settings = RelaySettings(host.strip("[]"), int(port), key, authorized_keys, max_splices,
                                 None if max_rate is None else _size(max_rate, "--max-rate"))
    except DistribError as exc:
        raise click.UsageError(str(exc)) from None

    def ready(host: str, port: int) -> None:
        click.echo(f"distrib relay ready on {host}:{port}, public key {key.public}")
        sys.stdout.flush()

    try:
        asyncio.run(run(settings, ready))
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise click.ClickException(f"cannot listen on {listen}: {why}") from None


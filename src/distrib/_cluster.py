"""``init(cluster=...)`` and a ``[cluster]`` section: the Main listens on loopback, a launcher
(``distrib.launch``) starts workers that dial it there through their tunnels, and the session
ends them when it closes.

Set up per session: a Main without a key of its own gets a throw-away one, and the launched
workers' keys go to an authorized-workers file of the session's (a copy of the configured one,
if any), both in a folder only this user can enter, removed at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from distrib import _runtime
from distrib._errors import ConfigError, LaunchError

if TYPE_CHECKING:  # (imported when a session starts: `import distrib` stays light)
    from distrib import _config
    from distrib.launch import SSH, Slurm
    from distrib.main._session import Session

JOIN_SECONDS = 30.0  # the longest init() waits for started workers to join


def _spec(cluster: object) -> SSH | Slurm:
    from distrib import _config
    from distrib.launch import SSH, Slurm

    if isinstance(cluster, (SSH, Slurm)):
        return cluster
    if isinstance(cluster, _config.SSHCluster):
        return SSH(cluster.hosts, cluster.threads, cluster.ssh_config, cluster.ssh_options,
                   cluster.worker_args, cluster.timeout)
    raise ConfigError(f"init(cluster=...): expected distrib.SSH([...]) or distrib.Slurm(...), "
                      f"got {cluster!r}")


def prepare(settings: _config.Settings) -> tuple[
        _config.Settings, Callable[[Session], None], Callable[[], None]]:
    """Settings for a Main whose workers are launched, what launches them once it runs, and
    what removes what was prepared if it never runs."""
    import shutil  # (here: most scripts launch nothing; `import distrib` stays light)
    import tempfile

    from msgspec import structs

    from distrib._scratch import private_prefix
    from distrib.launch import Slurm, Target
    from distrib.wire import _keys

    spec = _spec(settings.cluster)
    if isinstance(spec, Slurm):
        return _prepare_jobs(spec, settings)
    folder = Path(tempfile.mkdtemp(prefix=private_prefix("cluster")))  # (mode 0700)
    key = settings.key
    if key is None:
        key = _keys.generate()
        _keys.write(folder / "main.key", key)
    authorized = folder / "workers.authorized"
    if settings.authorized_workers is not None:
        shutil.copyfile(settings.authorized_workers, authorized)
    else:
        authorized.write_text("")
    ready = structs.replace(settings, key=key, authorized_workers=authorized,
                            listen=settings.listen or "127.0.0.1:0")

    def launch(session: Session) -> None:
        address = session.listen_address() or ""
        target = Target(int(address.rpartition(":")[2]), key.public, authorized,
                        settings.cache_dir, tuple(name for name, _ in session.env.pins))
        try:
            launched = spec.launch(target)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

        def end() -> None:
            launched.stop()
            shutil.rmtree(folder, ignore_errors=True)

        session.on_close.append(end)
        started = len(launched.ready())
        if not started:
            raise LaunchError("no worker started on any host: " + "; ".join(
                f"{h.name}: {h.problem}" for h in launched.hosts))
        # Each has dialled by now or within a moment: the first calls then spread over all.
        deadline = time.monotonic() + JOIN_SECONDS
        while session.dialled_in() < started and time.monotonic() < deadline:
            time.sleep(0.02)

    return ready, launch, lambda: shutil.rmtree(folder, ignore_errors=True)


def _prepare_jobs(slurm: Slurm, settings: _config.Settings) -> tuple[
        _config.Settings, Callable[[Session], None], Callable[[], None]]:
    """Batch jobs whose workers dial the Main's listening socket (all interfaces, unless
    ``listen`` says where): submitted once it listens, cancelled when it closes."""

    def launch(session: Session) -> None:
        session.on_close.append(slurm.close)
        slurm.start(session.listen_address() or "", session.load)

    return slurm.prepare(settings), launch, slurm.close


_runtime.launcher = prepare

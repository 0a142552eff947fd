"""The worker daemon's settings, read once (by the ``distrib worker`` command) into one frozen
record and passed down, as ``distrib._config.Settings`` is for the Main."""

from __future__ import annotations

from pathlib import Path

from msgspec import Struct, field

from distrib.wire._keys import KeyPair
from distrib.worker._envs import EnvPolicy
from distrib.worker._policy import Policy
from distrib.worker._sandbox import Sandboxes


class WorkerSettings(Struct, frozen=True):
    """How a worker daemon serves: where it listens, what it lends, what it keeps."""

    endpoint: str  # where it listens (a zmq endpoint)
    policy: Policy  # what it lends (as the flags and the policy file say at its start)
    cache_dir: Path
    name: str = ""  # "": the host and the port it listens on
    heartbeat_interval: float = 1.0
    lost_after: float = 10.0  # seconds a silent Main is kept
    exit_with_parent: int | None = None  # a process whose end stops the daemon
    linger: float = 0.0  # seconds with no Main after which it leaves (0: it stays)
    users_lock: Path | None = None  # held by the Mains using it (the local cluster's)
    exit_without_main: float | None = None  # seconds with none of its dialled Mains: it stops
    key: KeyPair | None = None
    authorized: Path | None = None  # the Mains' public keys (and quotas) it serves
    idle_after: float = 300.0  # seconds an idle executor is kept
    max_cache: int | None = None
    max_queued: int = 256 << 20
    env_policy: EnvPolicy = field(default_factory=EnvPolicy)
    max_objects: int = 2 << 30  # per key (all Mains of one key together; without: per Main)
    max_objects_total: int | None = None  # all Mains together (None: twice max_objects)
    policy_file: Path | None = None  # read again as it changes (and on SIGHUP)
    flags: Policy | None = None  # what the flags said: the file's settings go over these
    max_parked: int | None = None
    sandboxes: Sandboxes | None = None  # how executors' sandboxes are built (None: none)
    task_network: str = "none"  # what sandboxed tasks may reach: none, loopback, all
    connect: tuple[tuple[str, str], ...] = ()  # the Mains it dials: (host:port, their key)

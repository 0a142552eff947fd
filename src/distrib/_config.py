"""Settings, read once at set-up into a frozen record (a msgspec Struct) and passed down.

Sources, later ones winning: defaults; one configuration file (``DISTRIB_CONFIG``, else
``distrib.toml`` beside the main script or in the current folder, else ``[tool.distrib]`` of
``pyproject.toml`` there); ``DISTRIB_*`` environment variables; ``init()`` arguments. Every
invalid value fails with a ``ConfigError`` naming the source, the setting and what is wrong.

The file's shape (every key optional)::

    [main]
    key = "main.key"            # this Main's secret key file; paths are relative to the file
    workspace = "."             # the folder shipped to workers
    exclude = ["data/"]         # extra .gitignore-style patterns
    forward_output = true
    forward_env = ["MY_*"]      # variables forwarded to workers besides those the code names
    heartbeat = 1.0             # seconds between heartbeats
    lost_after = 10.0           # seconds of silence before a worker is declared lost
    dependencies = "auto"       # the packages workers install: "auto" (what the workspace
                                # imports, as installed here) or "none"
    requirements = "requirements.txt"  # or pyproject.toml / uv.lock: install these instead
    max_payload = "2G"          # most a call's arguments or its result may pickle to
    dashboard = true            # serve the live dashboard (on 127.0.0.1:8787), or a port,
                                # or "host:port"
    redistribution = "auto"     # how calls made inside tasks go: "relayed" (through this
                                # Main), "direct" (worker to worker) or "auto" (direct where
                                # a worker can, else relayed)
    listen = "0.0.0.0:7788"     # also accept workers that dial this Main (`--connect`)
    authorized_workers = "workers.authorized"  # their public keys, one a line (as a
                                # worker's authorized-keys file)
    relay = "203.0.113.9:7790"  # reach workers that cannot accept connections through a relay
    relay_key = "relay.key.pub" # the relay's public key (or its .pub file)

    [local]
    threads = 4                 # slots of the embedded local cluster
    linger = "10m"              # its daemon waits this long for the next script (default 0)

    [discovery]
    enabled = false             # look for workers announcing themselves on the LAN (mDNS)
    trust = ["<public key>"]    # discovered workers whose keys may be used
    trust_on_first_use = false  # also use unknown ones, remembering their key
    interfaces = []             # network interface addresses to browse on (default: all)

    [cluster]                   # start workers on SSH hosts that dial this Main back
    ssh = ["lab1", "me@lab2:2222"]  # as `ssh` takes them
    threads = 8                 # slots per worker (default: each host's cores)
    ssh_config = "~/.ssh/config"  # for `ssh -F` (default: ssh's own)
    worker_args = []            # more `distrib worker` flags there

    [[workers]]
    address = "192.0.2.7:7070"
    public_key = "..."          # as `distrib keygen` wrote it to the worker's .pub file

    [[workers]]                 # a worker behind NAT, reached through the relay by its key
    public_key = "..."
    via = "relay"               # (or address = "relay:<public key>")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import platformdirs
from msgspec import Struct, field

from distrib import _values
from distrib._errors import ConfigError
from distrib._values import endpoint, parse_size
from distrib.wire import _keys, _reach
from distrib.wire._keys import KeyPair
from distrib.wire._messages import check_redistribution


class WorkerAddress(Struct, frozen=True):
    """A worker to connect to: ``host:port``, ``tcp://...`` or ``ipc://...``, and its key."""

    address: str
    public_key: str | None = None


class Discovery(Struct, frozen=True):
    """LAN discovery of workers announcing themselves with mDNS."""

    enabled: bool = False
    trust: tuple[str, ...] = ()
    trust_on_first_use: bool = False
    interfaces: tuple[str, ...] = ()


class SSHCluster(Struct, frozen=True):
    """A ``[cluster]`` section: workers on these SSH hosts (as ``distrib.SSH`` takes them)."""

    hosts: tuple[str, ...]
    threads: int | None = None
    ssh_config: str | None = None
    ssh_options: tuple[str, ...] = ()
    worker_args: tuple[str, ...] = ()
    timeout: float = 300.0


def _cluster(name: str, table: dict[str, Any]) -> SSHCluster:
    if "ssh" not in table:
        raise ConfigError(f"{name}: needs ssh = [\"host\", ...] (the hosts to start workers on)")
    hosts = _values.strings(f"{name} ssh", table["ssh"])
    if not hosts:
        raise ConfigError(f"{name} ssh: no hosts")
    return SSHCluster(
        hosts, _values.positive(f"{name} threads", table["threads"], int)
        if "threads" in table else None,
        os.path.expanduser(_values.string(f"{name} ssh_config", table["ssh_config"]))
        if "ssh_config" in table else None,
        _values.strings(f"{name} ssh_options", table.get("ssh_options", [])),
        _values.strings(f"{name} worker_args", table.get("worker_args", [])),
        _values.positive(f"{name} timeout", table.get("timeout", 300.0), float))


class Settings(Struct, frozen=True):
    """Everything the Main needs to set up; built by ``load``."""

    workers: tuple[WorkerAddress, ...] = ()  # empty (and no discovery): the local cluster
    key: KeyPair | None = None
    local_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    linger: float = 0.0  # seconds the local cluster's daemon waits for the next Main; 0: none
    forward_output: bool = True
    workspace: Path | None = None  # None: the main script's folder (or the current folder)
    excludes: tuple[str, ...] = ()
    forward_env: tuple[str, ...] = ()  # extra variables (globs) forwarded to executors
    cache_dir: Path = field(default_factory=lambda: Path(platformdirs.user_cache_dir("distrib")))
    heartbeat_interval: float = 1.0
    lost_after: float = 10.0
    connect_timeout: float = 30.0
    discovery: Discovery = field(default_factory=Discovery)
    dependencies: str = "auto"  # "auto": what the workspace imports, as installed; "none"
    requirements: Path | None = None  # a requirements file shipped instead of "auto"
    max_payload: int | None = None  # bytes a call's arguments or result may pickle to
    shared_memory: bool = True  # large frames through /dev/shm with workers on this machine
    dashboard: str | None = None  # "host:port" of the live dashboard; None: no dashboard
    redistribution: str = "auto"  # how calls made inside tasks go (``REDISTRIBUTION``)
    listen: str | None = None  # "host:port" where workers dial this Main; None: none do
    authorized_workers: Path | None = None  # the keys of the workers that may dial it
    relay: str | None = None  # "host:port" of the relay "relay:KEY" workers are reached through
    relay_key: str | None = None  # the relay's public key
    cluster: object | None = None  # a launcher's settings (SSHCluster, distrib.SSH or
    # distrib.Slurm)
    source: str = "defaults"  # the configuration file used, for messages


def _worker(name: str, item: Any) -> WorkerAddress:
    if isinstance(item, WorkerAddress):
        worker = item
    elif isinstance(item, str):  # "host:port", or "host:port <key>" with a .pub comment or not
        address, *key = item.split(maxsplit=1) or [""]
        relayed = address.startswith(_reach.RELAYED)  # ("relay:KEY", a .pub line's comment)
        worker = WorkerAddress(address, key[0] if key and not relayed else None)
    elif isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
        worker = WorkerAddress(item[0], item[1])
    elif isinstance(item, dict):
        item = _reach.via(name, item)
        unknown = set(item) - {"address", "public_key"}
        if unknown or not isinstance(item.get("address"), str):
            raise ConfigError(f"{name}: each worker needs 'address' (and may have 'public_key')"
                              + (f"; unknown {sorted(unknown)}" if unknown else ""))
        public = item.get("public_key")
        if public is not None and not isinstance(public, str):
            raise ConfigError(f"{name}: public_key must be a string")
        worker = WorkerAddress(item["address"], public)
    else:
        raise ConfigError(f"{name}: expected 'host:port', (address, public_key) or a table, "
                          f"got {item!r}")
    try:
        worker = WorkerAddress(*_reach.relayed(worker.address, worker.public_key))
        endpoint(worker.address)
        if worker.public_key is not None:
            worker = WorkerAddress(worker.address,
                                   _keys.check_public(worker.public_key, worker.address))
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return worker


# --- sources ---------------------------------------------------------------------------------

_SCHEMA: dict[str, set[str]] = {
    "main": {"key", "workspace", "exclude", "forward_output", "shared_memory", "forward_env",
             "heartbeat", "lost_after", "dependencies", "requirements", "max_payload",
             "dashboard", "redistribution", "listen", "authorized_workers",
             "relay", "relay_key"},
    "local": {"threads", "linger"},
    "discovery": {"enabled", "trust", "trust_on_first_use", "interfaces"},
    "workers": set(),
    "cluster": {"ssh", "threads", "ssh_config", "ssh_options", "worker_args", "timeout"},
}


def find_file(environ: Mapping[str, str], main_dir: Path | None) -> tuple[Path, dict[str, Any]] | None:
    """The configuration file in force and its table, if any."""
    if raw := environ.get("DISTRIB_CONFIG", "").strip():
        path = Path(raw)
        if not path.is_file():
            raise ConfigError(f"DISTRIB_CONFIG={raw!r}: no such file")
        return path, _read_toml(path)
    folders = [d for d in (main_dir, Path.cwd()) if d is not None]
    for folder in folders:
        if (folder / "distrib.toml").is_file():
            return folder / "distrib.toml", _read_toml(folder / "distrib.toml")
    for folder in folders:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            table = _read_toml(pyproject).get("tool", {}).get("distrib")
            if isinstance(table, dict):
                return pyproject, table
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib  # (imported where a file is read: most runs have none)

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def _from_file(path: Path, table: dict[str, Any]) -> dict[str, Any]:
    where = str(path) + (" [tool.distrib]" if path.name == "pyproject.toml" else "")
    values: dict[str, Any] = {"source": where}
    for section, content in table.items():
        if section not in _SCHEMA:
            raise ConfigError(f"{where}: unknown section [{section}]; expected one of "
                              f"{', '.join(sorted(_SCHEMA))}")
        if section == "workers":
            if not isinstance(content, list):
                raise ConfigError(f"{where}: workers must be [[workers]] tables")
            values["workers"] = tuple(_worker(f"{where}: [[workers]]", w) for w in content)
            continue
        if not isinstance(content, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        for key in content:
            if key not in _SCHEMA[section]:
                raise ConfigError(f"{where}: unknown setting [{section}] {key}; expected one of "
                                  f"{', '.join(sorted(_SCHEMA[section]))}")
    main = table.get("main", {})
    name = f"{where}: [main]"
    base = path.parent
    if "key" in main:
        values["key_path"] = (base / _values.string(f"{name} key", main["key"]), f"{name} key")
    if "workspace" in main:
        values["workspace"] = base / _values.string(f"{name} workspace", main["workspace"])
    if "exclude" in main:
        values["excludes"] = _values.strings(f"{name} exclude", main["exclude"])
    if "forward_output" in main:
        values["forward_output"] = _values.boolean(f"{name} forward_output", main["forward_output"])
    if "forward_env" in main:
        values["forward_env"] = _values.strings(f"{name} forward_env", main["forward_env"])
    if "shared_memory" in main:
        values["shared_memory"] = _values.boolean(f"{name} shared_memory", main["shared_memory"])
    if "heartbeat" in main:
        values["heartbeat_interval"] = _values.positive(f"{name} heartbeat", main["heartbeat"], float)
    if "lost_after" in main:
        values["lost_after"] = _values.positive(f"{name} lost_after", main["lost_after"], float)
    if "dependencies" in main:
        values["dependencies"] = _values.dependencies(f"{name} dependencies", main["dependencies"])
    if "max_payload" in main:
        values["max_payload"] = parse_size(main["max_payload"], f"{name} max_payload")
    if "dashboard" in main:
        values["dashboard"] = _values.dashboard(f"{name} dashboard", main["dashboard"])
    if "redistribution" in main:
        values["redistribution"] = check_redistribution(f"{name} redistribution",
                                                  main["redistribution"])
    if "listen" in main:
        values["listen"] = _values.listen(f"{name} listen", main["listen"])
    if "authorized_workers" in main:
        values["authorized_workers"] = base / _values.string(f"{name} authorized_workers",
                                                   main["authorized_workers"])
    if "relay" in main:
        values["relay"] = _reach.relay(f"{name} relay", main["relay"])
    if "relay_key" in main:
        raw = main["relay_key"]
        if isinstance(raw, str) and (base / raw).is_file():
            raw = str(base / raw)
        values["relay_key"] = _reach.relay_key(f"{name} relay_key", raw)
    if "requirements" in main:
        values["requirements"] = _values.requirements(f"{name} requirements",
                                               base / _values.string(f"{name} requirements",
                                                           main["requirements"]))
    if "cluster" in table:
        values["cluster"] = _cluster(f"{where}: [cluster]", table["cluster"])
    local = table.get("local", {})
    if "threads" in local:
        values["local_threads"] = _values.positive(f"{where}: [local] threads", local["threads"], int)
    if "linger" in local:
        values["linger"] = _values.duration(f"{where}: [local] linger", local["linger"])
    disc = table.get("discovery", {})
    if disc:
        d = f"{where}: [discovery]"
        values["discovery"] = Discovery(
            _values.boolean(f"{d} enabled", disc.get("enabled", False)),
            tuple(_keys.check_public(k, f"{d} trust") for k in _values.strings(f"{d} trust",
                                                                        disc.get("trust", []))),
            _values.boolean(f"{d} trust_on_first_use", disc.get("trust_on_first_use", False)),
            _values.strings(f"{d} interfaces", disc.get("interfaces", [])),
        )
    return values


def _from_environ(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if raw := env.get("DISTRIB_WORKERS", "").strip():
        values["workers"] = tuple(_worker("DISTRIB_WORKERS", w)
                                  for w in raw.split(",") if w.strip())
    if raw := env.get("DISTRIB_KEY", "").strip():
        values["key_path"] = (Path(raw), "DISTRIB_KEY")
    if raw := env.get("DISTRIB_LOCAL_THREADS", "").strip():
        values["local_threads"] = _values.positive("DISTRIB_LOCAL_THREADS", raw, int)
    if raw := env.get("DISTRIB_LINGER", "").strip():
        values["linger"] = _values.duration("DISTRIB_LINGER", raw)
    if raw := env.get("DISTRIB_OUTPUT", "").strip():
        values["forward_output"] = _values.boolean("DISTRIB_OUTPUT", raw)
    if raw := env.get("DISTRIB_SHARED_MEMORY", "").strip():
        values["shared_memory"] = _values.boolean("DISTRIB_SHARED_MEMORY", raw)
    if raw := env.get("DISTRIB_WORKSPACE", "").strip():
        values["workspace"] = Path(raw)
    if raw := env.get("DISTRIB_EXCLUDE", "").strip():
        values["excludes"] = tuple(p.strip() for p in raw.split(",") if p.strip())
    if raw := env.get("DISTRIB_FORWARD_ENV", "").strip():
        values["forward_env"] = tuple(p.strip() for p in raw.split(",") if p.strip())
    if raw := env.get("DISTRIB_CACHE_DIR", "").strip():
        values["cache_dir"] = Path(raw)
    if raw := env.get("DISTRIB_HEARTBEAT", "").strip():
        values["heartbeat_interval"] = _values.positive("DISTRIB_HEARTBEAT", raw, float)
    if raw := env.get("DISTRIB_LOST_AFTER", "").strip():
        values["lost_after"] = _values.positive("DISTRIB_LOST_AFTER", raw, float)
    if raw := env.get("DISTRIB_MAX_PAYLOAD", "").strip():
        values["max_payload"] = parse_size(raw, "DISTRIB_MAX_PAYLOAD")
    if raw := env.get("DISTRIB_DASHBOARD", "").strip():
        values["dashboard"] = _values.dashboard("DISTRIB_DASHBOARD", raw)
    if raw := env.get("DISTRIB_REDISTRIBUTION", "").strip():
        values["redistribution"] = check_redistribution("DISTRIB_REDISTRIBUTION", raw)
    if raw := env.get("DISTRIB_LISTEN", "").strip():
        values["listen"] = _values.listen("DISTRIB_LISTEN", raw)
    if raw := env.get("DISTRIB_AUTHORIZED_WORKERS", "").strip():
        values["authorized_workers"] = Path(raw)
    if raw := env.get("DISTRIB_RELAY", "").strip():
        values["relay"] = _reach.relay("DISTRIB_RELAY", raw)
    if raw := env.get("DISTRIB_RELAY_KEY", "").strip():
        values["relay_key"] = _reach.relay_key("DISTRIB_RELAY_KEY", raw)
    if raw := env.get("DISTRIB_DEPENDENCIES", "").strip():
        values["dependencies"] = _values.dependencies("DISTRIB_DEPENDENCIES", raw)
    if raw := env.get("DISTRIB_REQUIREMENTS", "").strip():
        values["requirements"] = _values.requirements("DISTRIB_REQUIREMENTS", Path(raw))
    return values


class Overrides(Struct, frozen=True):
    """The settings ``distrib.init()`` takes; ``None`` leaves one to the file and environment."""

    workers: Sequence[str | tuple[str, str] | WorkerAddress] | None = None
    local_threads: int | None = None
    workspace: str | Path | None = None
    forward_output: bool | None = None
    key: str | Path | None = None
    dependencies: str | None = None
    requirements: str | Path | None = None
    max_payload: int | str | None = None
    dashboard: bool | int | str | None = None
    redistribution: str | None = None
    listen: str | None = None
    authorized_workers: str | Path | None = None
    linger: float | str | None = None
    cluster: object | None = None

    def given(self) -> bool:
        """Whether any setting is given."""
        return any(getattr(self, name) is not None for name in self.__struct_fields__)


def load(environ: Mapping[str, str] | None = None, overrides: Overrides = Overrides(),
         main_dir: Path | None = None) -> Settings:
    """Build Settings from the file, the environment and explicit ``init()`` arguments."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    found = find_file(env, main_dir)
    if found is not None:
        values.update(_from_file(*found))
    values.update(_from_environ(env))
    given = overrides
    if given.workers is not None:
        values["workers"] = tuple(_worker("init(workers=...)", w) for w in given.workers)
    if given.local_threads is not None:
        values["local_threads"] = _values.positive("init(local_threads=...)", given.local_threads, int)
    if given.linger is not None:
        values["linger"] = _values.duration("init(linger=...)", given.linger)
    if given.workspace is not None:
        values["workspace"] = Path(given.workspace)
    if given.forward_output is not None:
        values["forward_output"] = bool(given.forward_output)
    if given.key is not None:
        values["key_path"] = (Path(given.key), "init(key=...)")
    if given.max_payload is not None:
        values["max_payload"] = parse_size(given.max_payload, "init(max_payload=...)")
    if given.dashboard is not None:
        values["dashboard"] = _values.dashboard("init(dashboard=...)", given.dashboard)
    if given.redistribution is not None:
        values["redistribution"] = check_redistribution("init(redistribution=...)",
                                                  given.redistribution)
    if given.listen is not None:
        values["listen"] = _values.listen("init(listen=...)", given.listen)
    if given.cluster is not None:
        values["cluster"] = given.cluster
    if given.authorized_workers is not None:
        values["authorized_workers"] = Path(given.authorized_workers)
    if given.dependencies is not None:
        values["dependencies"] = _values.dependencies("init(dependencies=...)", given.dependencies)
    if given.requirements is not None:
        values["requirements"] = _values.requirements("init(requirements=...)",
                                               Path(given.requirements))
    if "key_path" in values:
        key_path, where = values.pop("key_path")
        try:
            values["key"] = _keys.load_secret(key_path)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    settings = Settings(**values)
    if settings.workspace is not None and not settings.workspace.is_dir():
        raise ConfigError(f"{settings.source}: workspace {settings.workspace}: no such folder")
    keyed = [w.address for w in settings.workers if w.public_key]
    if keyed and settings.key is None:
        raise ConfigError(f"{settings.source}: workers {', '.join(keyed)} have public keys, so "
                          "this Main needs its own key: run `distrib keygen main.key`, give its "
                          ".pub line to the workers' owners, and set [main] key = \"main.key\" "
                          "(or DISTRIB_KEY, or init(key=...))")
    if settings.listen is not None:
        _check_listening(settings)
    _reach.check_relayed(settings.source, [w.address for w in settings.workers],
                          settings.relay, settings.relay_key)
    return settings


def _check_listening(settings: Settings) -> None:
    """A Main that listens proves its key and knows which workers' keys to accept."""
    where = f"{settings.source}: listen = {settings.listen!r}"
    if settings.key is None:
        raise ConfigError(f"{where} needs this Main's key (workers that dial it check it): run "
                          "`distrib keygen main.key` and set [main] key = \"main.key\" (or "
                          "DISTRIB_KEY, or init(key=...))")
    if settings.authorized_workers is None:
        raise ConfigError(f"{where} needs the public keys of the workers that may dial it: "
                          "list them in a file, one a line, and set [main] authorized_workers "
                          "(or DISTRIB_AUTHORIZED_WORKERS, or init(authorized_workers=...))")
    _keys.read_authorized(settings.authorized_workers)  # (a ConfigError naming the line)

"""The owner's policy for a lent machine: what the flags and the ``--policy`` file say.

Pure: text in, a ``Policy`` out. The file is TOML; every key is optional and, where given,
wins over the flag of the same name. The daemon reads it again when it changes (or on SIGHUP)
and applies what changed while it runs.

    threads = 4                     # slots; fewer: running tasks finish, no new ones start
    max_task_memory = "4G"          # a task over it is stopped (WorkerCrashed)
    max_memory = "12G"              # all executors together
    max_task_disk = "10G"           # what a task writes; over it, it fails (TaskDiskExceeded)
    nice = 10                       # the owner's own programs win the CPU
    when_idle = "vacate"            # lend only while the machine is idle: "finish" | "vacate"
    idle_load = 0.25                # "idle": other programs use under this share of the cores
    hours = "Mon-Fri 19:00-07:00; Sat-Sun"   # lend only then (local time)
    connect = ["198.51.100.4:7788 <the Main's public key>"]   # Mains it dials (--connect)
    relay = "203.0.113.9:7790 <the relay's public key>"      # reached through it (--relay)
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

from msgspec import Struct, structs

from distrib._values import parse_size
from distrib._errors import ConfigError
from distrib.wire import _keys, _reach

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
WHEN_IDLE = ("finish", "vacate")


class Hours(Struct, frozen=True):
    """When the machine is lent, e.g. ``Mon-Fri 19:00-07:00; Sat-Sun``: rules separated by
    ``;``, each days (``Mon``, ``Mon-Fri``, ``Sat,Sun``; none: every day) and times (none: all
    day). A time range that passes midnight belongs to the day it starts on."""

    text: str
    # (weekday 0-6, start minute, end minute) with end > start; a range over midnight is two
    windows: tuple[tuple[int, int, int], ...]

    @classmethod
    def parse(cls, text: str, where: str = "hours") -> Hours:
        windows: list[tuple[int, int, int]] = []
        rules = [r.strip() for r in text.split(";") if r.strip()]
        if not rules:
            raise ConfigError(f"{where}={text!r}: expected rules such as \"Mon-Fri 19:00-07:00; "
                              "Sat-Sun\"")
        for rule in rules:
            parts = re.sub(r"\s*,\s*", ",", rule).split()
            days = list(range(7))
            if parts and not parts[0][:1].isdigit():
                days = _days(parts.pop(0), text, where)
            ranges = [_minutes(p, text, where) for part in parts for p in part.split(",") if p]
            for day in days:
                for start, end in ranges or [(0, 24 * 60)]:
                    if end > start:
                        windows.append((day, start, end))
                    else:  # past midnight: the rest of this day, then the next morning
                        windows.append((day, start, 24 * 60))
                        if end:
                            windows.append(((day + 1) % 7, 0, end))
        return cls(text, tuple(windows))

    def open(self, when: datetime.datetime) -> bool:
        """Whether ``when`` (local time) is within the lending hours."""
        minute = when.hour * 60 + when.minute
        day = when.weekday()
        return any(d == day and start <= minute < end for d, start, end in self.windows)


def _days(text: str, whole: str, where: str) -> list[int]:
    out: list[int] = []
    for part in text.lower().split(","):
        first, _, last = part.partition("-")
        try:
            a = DAYS.index(first[:3]) if len(first) >= 3 else -1
            b = DAYS.index(last[:3]) if last else a
        except ValueError:
            a = b = -1
        if a < 0 or b < 0:
            raise ConfigError(f"{where}={whole!r}: {part!r} is not a day or days (Mon, Mon-Fri, "
                              "Sat,Sun)")
        out.extend((a + i) % 7 for i in range(((b - a) % 7) + 1))
    return out


def _minutes(text: str, whole: str, where: str) -> tuple[int, int]:
    match = _RANGE.match(text)
    if match is None:
        raise ConfigError(f"{where}={whole!r}: {text!r} is not a time range such as 19:00-07:00")
    h1, m1, h2, m2 = (int(x) for x in match.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        raise ConfigError(f"{where}={whole!r}: {text!r} is not a time of day")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end and start:
        raise ConfigError(f"{where}={whole!r}: {text!r} is empty (a whole day is 00:00-24:00, "
                          "or no time at all)")
    return start, end


class Policy(Struct, frozen=True):
    """What the owner allows: every field as its flag or policy-file key names it."""

    threads: int
    max_task_memory: int | None = None
    max_memory: int | None = None
    nice: int = 10
    when_idle: str | None = None  # lend only while the machine is idle: "finish" or "vacate"
    idle_load: float = 0.25  # idle: other programs use less than this share of the cores
    hours: Hours | None = None
    max_task_disk: int | None = None
    connect: tuple[tuple[str, str], ...] = ()  # the Mains it dials: (host:port, their key)
    relay: tuple[str, str] | None = None  # reached through this relay: (host:port, its key)

    def describe(self) -> str:
        """The settings, as the log says them."""
        from distrib.worker._memory import human

        out = [f"threads {self.threads}", f"nice {self.nice}"]
        if self.max_task_memory:
            out.append(f"max_task_memory {human(self.max_task_memory)}")
        if self.max_memory:
            out.append(f"max_memory {human(self.max_memory)}")
        if self.max_task_disk:
            out.append(f"max_task_disk {human(self.max_task_disk)}")
        if self.when_idle:
            out.append(f"when_idle {self.when_idle} (idle: others use under "
                       f"{self.idle_load:.0%} of the cores)")
        if self.hours:
            out.append(f"hours {self.hours.text!r}")
        if self.connect:
            out.append(f"connect {', '.join(address for address, _ in self.connect)}")
        if self.relay:
            out.append(f"relay {self.relay[0]}")
        return ", ".join(out)


def check(policy: Policy, where: str) -> Policy:
    """``policy`` if its values make sense, else ConfigError naming the one that does not."""
    if policy.threads < 1:
        raise ConfigError(f"{where} threads={policy.threads}: expected at least 1")
    if not 0 <= policy.nice <= 19:
        raise ConfigError(f"{where} nice={policy.nice}: expected 0 to 19")
    if policy.when_idle is not None and policy.when_idle not in WHEN_IDLE:
        raise ConfigError(f"{where} when_idle={policy.when_idle!r}: expected \"finish\" (running "
                          "tasks end first) or \"vacate\" (they are stopped and handed back)")
    if not 0 < policy.idle_load <= 1:
        raise ConfigError(f"{where} idle_load={policy.idle_load}: expected a share of the cores "
                          "above 0 and at most 1, such as 0.25")
    return policy


def read(path: Path, base: Policy) -> Policy:
    """``base`` (from the flags) with what the TOML file at ``path`` sets."""
    import tomllib  # (here: most daemons have no policy file)

    where = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"policy file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from None
    known = set(Policy.__struct_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"policy file {path}: unknown setting {unknown[0]!r}; expected some of "
                          f"{', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for name, raw in data.items():
        values[name] = _value(name, raw, where)
    return check(structs.replace(base, **values), where)


def dial(address: str, key: str, where: str) -> tuple[str, str]:
    """A Main to dial: (``host:port``, its public key), checked."""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{where}: {address!r} is not HOST:PORT")
    return f"{host}:{int(port)}", _keys.check_public(key, f"{where} {address}")


def _value(name: str, raw: Any, where: str) -> Any:
    if name == "connect":
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise ConfigError(f"{where} connect: expected a list of \"HOST:PORT <the Main's "
                              "public key>\"")
        lines = [line.strip().partition(" ") for line in raw]
        return tuple(dial(address, key.strip(), f"{where} connect") for address, _, key in lines)
    if name == "relay":
        if not isinstance(raw, str) or len(raw.split()) < 2:
            raise ConfigError(f"{where} relay: expected \"HOST:PORT <the relay's public key>\"")
        address, key = raw.split(maxsplit=1)
        return (_reach.relay(f"{where} relay", address),
                _reach.relay_key(f"{where} relay key", key))
    if name in ("max_task_memory", "max_memory", "max_task_disk"):
        return parse_size(raw, f"{where} {name}")
    if name == "hours":
        if not isinstance(raw, str):
            raise ConfigError(f"{where} hours: expected a string such as \"Mon-Fri 19:00-07:00\"")
        return Hours.parse(raw, f"{where} hours")
    if name in ("threads", "nice"):
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise ConfigError(f"{where} {name}={raw!r}: expected a whole number")
        return raw
    if name == "idle_load":
        if not isinstance(raw, (int, float)) or isinstance(raw, bool):
            raise ConfigError(f"{where} idle_load={raw!r}: expected a number such as 0.25")
        return float(raw)
    if not isinstance(raw, str):  # when_idle
        raise ConfigError(f"{where} when_idle={raw!r}: expected \"finish\" or \"vacate\"")
    return raw

"""A Main's Python environment as it travels in its Hello: the Python version, the packages
with exact versions, and wheels of packages no index has (shipped as blobs).

The worker names an environment by the hash of these bytes (never by a name a Main gives), so
two Mains describing the same environment share one build, and a Main cannot claim another's.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import msgpack
from msgspec import Struct

from distrib._errors import ProtocolError

MAX_REQUIREMENTS = 2000
MAX_WHEELS = 200
MAX_WHEEL_BYTES = 256 << 20
MAX_FILE_TEXT = 256 << 10
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]{0,99}$")
_PYTHON = re.compile(r"^3\.\d{1,3}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
REQUIREMENT_FILES = ("requirements.txt", "pyproject.toml")  # (uv.lock is exported on the Main)


class Wheel(Struct, frozen=True):
    """A wheel the Main built of a package installed from a folder, a file or a VCS."""

    name: str
    version: str
    digest: str  # sha256 of the wheel file
    size: int

    @property
    def filename(self) -> str:
        return f"{_normal(self.name)}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True, slots=True)
class EnvSpec:
    """What an environment holds. ``pins`` are ``(name, version)`` pairs from an index;
    ``file`` is a requirements file's (name, text) when the Main named one instead."""

    python: str
    pins: tuple[tuple[str, str], ...] = ()
    wheels: tuple[Wheel, ...] = ()
    file: tuple[str, str] | None = None
    _raw: bytes = field(default=b"", compare=False, repr=False)

    @property
    def empty(self) -> bool:
        """Nothing to install: the interpreter alone."""
        return not self.pins and not self.wheels and self.file is None

    def encode(self) -> bytes:
        return self._raw or msgpack.packb([
            1, self.python, [list(p) for p in sorted(self.pins)],
            [[w.name, w.version, w.digest, w.size] for w in sorted(self.wheels,
                                                                   key=lambda w: w.name)],
            list(self.file) if self.file else None])

    @property
    def env_id(self) -> str:
        """The environment's name: a hash of its description."""
        return hashlib.sha256(self.encode()).hexdigest()[:32]

    def summary(self, most: int = 6) -> str:
        """``numpy 2.1.3, pandas 2.2.3, ...`` for people."""
        names = [f"{n} {v}" for n, v in self.pins] + [f"{w.name} {w.version} (shipped)"
                                                     for w in self.wheels]
        if self.file:
            names.append(f"the packages of {self.file[0]}")
        if not names:
            return "no packages"
        more = f" and {len(names) - most} more" if len(names) > most else ""
        return ", ".join(names[:most]) + more


def decode(raw: bytes) -> EnvSpec:
    """Check a description from the wire; ``ProtocolError`` naming what is wrong."""
    try:
        value = msgpack.unpackb(raw, use_list=True, raw=False, strict_map_key=True)
        version, python, pins, wheels, file = value
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"environment description: not a description ({exc})") from None
    _check(version == 1, f"version {version!r} unknown")
    _check(isinstance(python, str) and bool(_PYTHON.match(python)), f"python {python!r}")
    _check(isinstance(pins, list) and len(pins) <= MAX_REQUIREMENTS, "pins: not a short list")
    _check(isinstance(wheels, list) and len(wheels) <= MAX_WHEELS, "wheels: not a short list")
    out_pins = []
    for pin in pins:
        _check(isinstance(pin, list) and len(pin) == 2 and isinstance(pin[0], str)
               and isinstance(pin[1], str) and bool(_NAME.match(pin[0]))
               and bool(_VERSION.match(pin[1])), f"package pin {pin!r}")
        out_pins.append((pin[0], pin[1]))
    out_wheels = []
    for w in wheels:
        _check(isinstance(w, list) and len(w) == 4 and all(isinstance(x, str) for x in w[:3])
               and bool(_NAME.match(w[0])) and bool(_VERSION.match(w[1]))
               and bool(_DIGEST.match(w[2])) and isinstance(w[3], int)
               and 0 < w[3] <= MAX_WHEEL_BYTES, f"wheel {w!r}")
        out_wheels.append(Wheel(w[0], w[1], w[2], w[3]))
    if file is not None:
        _check(isinstance(file, list) and len(file) == 2 and file[0] in REQUIREMENT_FILES
               and isinstance(file[1], str) and len(file[1]) <= MAX_FILE_TEXT,
               "requirements file: expected requirements.txt or pyproject.toml, and text")
    return EnvSpec(python, tuple(out_pins), tuple(out_wheels),
                   (file[0], file[1]) if file else None, raw)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ProtocolError(f"environment description: bad {what}")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def normalize(name: str) -> str:
    """A distribution name as indexes compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()

"""CURVE key pairs and authorized-keys files, in the spirit of ssh-keygen.

``distrib keygen PATH`` writes the secret key to ``PATH`` (owner-only) and the public key to
``PATH.pub``. Keys are Z85 text, 40 characters. An authorized-keys file lists one public key
per line, optionally followed by a comment; ``#`` starts a comment line.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import zmq
from msgspec import Struct

from distrib._errors import ConfigError

log = logging.getLogger("distrib")
T = TypeVar("T")
_Z85_KEY = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


class KeyPair(Struct, frozen=True):
    """A CURVE key pair as Z85 text."""

    public: str
    secret: str


def generate() -> KeyPair:
    public, secret = zmq.curve_keypair()
    return KeyPair(public.decode(), secret.decode())


def is_public(key: str) -> bool:
    """Whether ``key`` reads as a public key (40 characters of Z85)."""
    return bool(_Z85_KEY.match(key))


def check_public(key: str, where: str) -> str:
    """The public key in ``key``, which may be followed by a comment as in a ``.pub`` file
    (``<key> user@host``); ``ConfigError`` if it is not a well-formed key."""
    words = key.split(maxsplit=1)
    key = words[0] if words else ""
    if not _Z85_KEY.match(key):
        hint = (f"; it is {len(key)} characters long: a shell expands a $ in a key between "
                "double quotes, so put it in single quotes") if len(key) < 40 else ""
        raise ConfigError(f"{where}: {key[:48]!r} is not a public key (40 characters of Z85, "
                          f"as `distrib keygen` writes to its .pub file){hint}")
    return key


def write(path: Path, pair: KeyPair, comment: str = "") -> None:
    """Write the secret key file (mode 600) and the ``.pub`` file beside it."""
    if path.exists():
        raise ConfigError(f"{path} exists; remove it first or choose another path")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        # The first line also marks the file so a workspace scan never ships it.
        f.write("# distrib secret key: keep it private\n"
                f"public = {pair.public}\nsecret = {pair.secret}\n")
    pub = path.with_name(path.name + ".pub")
    pub.write_text(f"{pair.public} {comment}".rstrip() + "\n")


def load_secret(path: Path) -> KeyPair:
    """Read a secret key file written by ``write``; refuse one others can read."""
    try:
        st = path.stat()
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(f"key file {path}: {why}; create one with "
                          f"`distrib keygen {path}`") from None
    if "secret =" not in text:
        raise ConfigError(f"key file {path} is not a distrib secret key"
                          + (" but a public one: name the file without .pub"
                             if _Z85_KEY.match(text.split()[0] if text.split() else "") else
                             "; make one with `distrib keygen`"))
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"key file {path} is readable by other users; run `chmod 600 {path}`")
    fields = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition("=") for line in text.splitlines())
        if not k.strip().startswith("#") and v
    )
    if "public" not in fields or "secret" not in fields:
        raise ConfigError(f"key file {path} is not a distrib secret key (expected 'public = ' "
                          "and 'secret = ' lines); make one with `distrib keygen`")
    public = check_public(fields["public"], f"key file {path}")
    secret = fields["secret"]
    if not _Z85_KEY.match(secret) or zmq.curve_public(secret.encode()).decode() != public:
        raise ConfigError(f"key file {path}: the secret key does not match its public key")
    return KeyPair(public, secret)


def read_public_file(path: Path) -> str:
    """The public key in a ``.pub`` file (the first word of its first line)."""
    try:
        first = path.read_text().split()
    except OSError as exc:
        raise ConfigError(f"public key file {path}: {exc.strerror}") from None
    if not first:
        raise ConfigError(f"public key file {path} is empty")
    return check_public(first[0], f"public key file {path}")


def read_authorized(path: Path) -> dict[str, str]:
    """Public keys of an authorized-keys file, mapped to their comments."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"authorized keys {path}: {exc.strerror}") from None
    keys: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        key, _, comment = line.partition(" ")
        if not line or (line.startswith("#") and not _Z85_KEY.match(key)):
            continue  # a comment (a key may itself begin with '#', but has no space in it)
        keys[check_public(key, f"{path} line {number}")] = comment.strip()
    return keys


class Watched(Generic[T]):
    """A file read at start (its errors raise) and read again when it changes: ``parse``'s
    value, kept as it was when the file breaks (said once per change)."""

    def __init__(self, path: Path, parse: Callable[[Path], T], what: str) -> None:
        self.path, self._parse, self._what = path, parse, what
        try:
            stamp: tuple[int, int, int] | None = self._signature()
        except OSError:
            stamp = None  # (``parse`` says what is wrong)
        self.value: T = parse(path)
        self._stamp = stamp
        self._error = ""  # why it last could not be read (said once)

    def _signature(self) -> tuple[int, int, int]:
        # File times tick coarsely (two writes a moment apart may share one): the size and
        # the inode (a file replaced whole) tell those apart too.
        st = self.path.stat()
        return st.st_mtime_ns, st.st_size, st.st_ino

    def changed(self) -> None:
        """Read it again at the next ``reload()`` even if it looks the same (SIGHUP)."""
        self._stamp = None

    def reload(self) -> bool:
        """Read the file again if it changed; whether ``value`` was replaced."""
        try:
            stamp = self._signature()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            self.value = self._parse(self.path)
        except Exception as exc:  # (ConfigError, OSError: the daemon must go on)
            if str(exc) != self._error:
                self._error = str(exc)
                log.warning("%s %s not reloaded (the previous list stays): %s",
                            self._what, self.path, exc)
            return False
        self._error = ""
        return True

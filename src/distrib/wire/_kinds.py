"""The wire's enumerations, the forms of the names it carries, and payload sizes, apart from the
messages: executors import them, and an executor of another Python version has no msgspec to
build the messages with."""

from __future__ import annotations

import enum
import re
from typing import Any

OBJECT_NAME = re.compile(r"[0-9a-f]{32}")  # a shared object's name: the hash of its frames
# a frame's file in /dev/shm: distrib-<the Main's pid>-<random or "probe">
SHM_NAME = re.compile(r"distrib-([0-9]{1,10})-[0-9a-z]{1,40}")


class Outcome(enum.StrEnum):
    """How a task ended, as a worker reports it."""

    OK = "ok"  # the payload is the pickled result
    ERROR = "error"  # the function raised; the payload is the pickled exception (may be empty)
    CRASHED = "crashed"  # the executor process died running it
    CANCELLED = "cancelled"  # withdrawn or stopped at the Main's request
    TIMEOUT = "timeout"  # ran past its timeout and was stopped
    ENV_ERROR = "env_error"  # its environment could not be fetched, built or imported
    DEFERRED = "deferred"  # the worker holds as much of this Main's work as it takes: later


class RefusalCode(enum.StrEnum):
    """Why a worker refused a Main (``Refused.code``); the Main acts on the code, not the text."""

    PROTOCOL = "protocol"  # the Hello's protocol version is not this worker's
    UNKNOWN_PEER = "unknown_peer"  # no Hello from this connection (the worker restarted)
    MALFORMED = "malformed"  # a malformed message: the Main's state here is forgotten
    SHUTTING_DOWN = "shutting_down"  # the daemon is stopping
    NOT_DELEGATE = "not_delegate"  # a worker's Hello for a Main whose Peers do not name it


def payload_size(frames: list[Any]) -> int:
    """Bytes of a payload, all its pieces together."""
    return sum(memoryview(f).nbytes for f in frames)

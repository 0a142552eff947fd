"""Every message of wire protocol v1, one frozen dataclass each (see docs/protocol.md).

A message travels as a ZeroMQ multipart message: frame 0 is the msgpack header (the type tag
followed by the fields in declaration order), further frames are opaque payload bytes (pickled
calls and results, compressed blobs) that the worker daemon only moves, never unpickles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

PROTOCOL_VERSION = 1


def split_payload(frames: list[Any]) -> tuple[list[bytes], list[Any]]:
    """(inline pieces, separate frames) for a payload: all inline if every piece is small."""
    if all(memoryview(f).nbytes < INLINE_MAX for f in frames):
        return [bytes(f) for f in frames], []
    return [], frames


@dataclass(frozen=True, slots=True)
class Message:
    """Base of all messages; ``frames`` holds the payload frames after the header."""

    TAG: ClassVar[int] = 0
    frames: tuple[Any, ...] = field(default=(), kw_only=True, compare=False, repr=False)


# --- handshake -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """Main -> worker, first message. ``key`` is reserved for key-based authentication."""

    TAG: ClassVar[int] = 1
    protocol: int
    main_id: str
    name: str
    python: str
    pid: int
    forward_output: bool
    key: str


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """Worker -> Main, reply to Hello: who the worker is and what it offers."""

    TAG: ClassVar[int] = 2
    protocol: int
    worker_id: str
    name: str
    platform: str
    python: str
    slots: int
    pid: int


@dataclass(frozen=True, slots=True)
class Refused(Message):
    """Worker -> Main, reply to Hello when the worker will not serve this Main."""

    TAG: ClassVar[int] = 3
    reason: str


@dataclass(frozen=True, slots=True)
class Goodbye(Message):
    """Main -> worker: this Main is leaving; drop its queued and running tasks."""

    TAG: ClassVar[int] = 4


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Either way: I am alive. From a worker it also reports its load."""

    TAG: ClassVar[int] = 5
    busy: int
    queued: int


# --- tasks -----------------------------------------------------------------------------------


INLINE_MAX = 256 * 1024  # payload pieces below this travel inside the header


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task inside a Submit.

    Its call payload is ``inline`` (small pieces carried in the header, so a batch of tiny
    tasks is one frame) followed by the next ``nframes`` frames of the message (large buffers,
    which travel without copies).
    """

    task_id: int
    dist: str
    threads: int
    timeout: float | None
    inline: list[bytes]
    nframes: int


@dataclass(frozen=True, slots=True)
class Submit(Message):
    """Main -> worker: run these tasks (batched; payload frames follow in task order)."""

    TAG: ClassVar[int] = 10
    tasks: list[TaskSpec]


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    """Main -> worker: withdraw these tasks if queued, stop them if running."""

    TAG: ClassVar[int] = 11
    task_ids: list[int]


@dataclass(frozen=True, slots=True)
class ResultSpec:
    """One outcome inside a Results; its payload is ``inline`` then the next ``nframes`` frames.

    ``status`` is one of STATUSES. For "error" the payload is the pickled exception and
    ``info`` holds type, message and traceback text (used when the pickle does not load).
    """

    task_id: int
    status: str
    info: dict[str, str]
    inline: list[bytes]
    nframes: int


STATUSES = ("ok", "error", "crashed", "cancelled", "timeout", "env_error")


@dataclass(frozen=True, slots=True)
class Results(Message):
    """Worker -> Main: outcomes of finished tasks (batched)."""

    TAG: ClassVar[int] = 12
    results: list[ResultSpec]


@dataclass(frozen=True, slots=True)
class Output(Message):
    """Worker -> Main: text a task wrote to stdout (stream 1) or stderr (stream 2)."""

    TAG: ClassVar[int] = 13
    task_id: int
    stream: int
    text: str


# --- workspace -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NeedManifest(Message):
    """Worker -> Main: I lack this distribution; send its manifest."""

    TAG: ClassVar[int] = 20
    dist: str


@dataclass(frozen=True, slots=True)
class Manifest(Message):
    """Main -> worker: the distribution's manifest (one frame, msgpack) and its main module."""

    TAG: ClassVar[int] = 21
    dist: str


@dataclass(frozen=True, slots=True)
class NeedBlobs(Message):
    """Worker -> Main: send these blobs (content hashes) of the distribution."""

    TAG: ClassVar[int] = 22
    dist: str
    hashes: list[str]


@dataclass(frozen=True, slots=True)
class Blobs(Message):
    """Main -> worker: zlib-compressed blobs, one frame per hash, in ``hashes`` order."""

    TAG: ClassVar[int] = 23
    dist: str
    hashes: list[str]


@dataclass(frozen=True, slots=True)
class DistFailed(Message):
    """Main -> worker: the Main cannot provide this distribution (reason given)."""

    TAG: ClassVar[int] = 24
    dist: str
    reason: str


# --- inspection ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusRequest(Message):
    """Anyone -> worker: report your state (no Hello needed; answers facts and counters)."""

    TAG: ClassVar[int] = 30


@dataclass(frozen=True, slots=True)
class Status(Message):
    """Worker -> asker: name, platform, slots, load and counters."""

    TAG: ClassVar[int] = 31
    info: dict[str, Any]


ALL_MESSAGES: tuple[type[Message], ...] = (
    Hello,
    Welcome,
    Refused,
    Goodbye,
    Heartbeat,
    Submit,
    Cancel,
    Results,
    Output,
    NeedManifest,
    Manifest,
    NeedBlobs,
    Blobs,
    DistFailed,
    StatusRequest,
    Status,
)

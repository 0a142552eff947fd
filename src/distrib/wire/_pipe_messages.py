"""The messages between the daemon and its executor processes: one frozen dataclass each.

``_pipe`` turns them into a msgpack header (the verb, then the fields in the order written
here) and payload frames, and back, checking every field; nothing else sees the header. A
message with a payload has ``frames`` as its last field, which does not go in the header.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from distrib.wire._messages import Outcome


class Verb(enum.StrEnum):
    """The first field of every message on an executor's pipe."""

    # daemon -> executor
    CONTEXT = "context"
    BECOME = "become"  # (to a zygote, with its socket)
    RUN = "run"
    SKIP = "skip"
    CHILD = "child"
    # executor -> daemon
    READY = "ready"
    NOFORK = "nofork"
    SKIPPED = "skipped"
    ENV_ERROR = "env_error"
    OUT = "out"
    DONE = "done"
    CALL = "call"
    CANCEL_CHILD = "cancel_child"
    PARK = "park"
    UNPARK = "unpark"


# --- daemon -> executor ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Context:
    """First to an executor or template: the Main's ``sys.argv`` and variables, the modules
    a template imports ahead, and the bytes a result may pickle to (0: no limit)."""

    VERB: ClassVar[Verb] = Verb.CONTEXT
    argv: list[str]
    variables: dict[str, str]
    preload: list[str]
    max_payload: int


@dataclass(frozen=True, slots=True)
class Become:
    """To a zygote (an interpreter started ahead; see ``worker._pool.Zygote``), with a
    socket: be the process started with these arguments, variables and working folder."""

    VERB: ClassVar[Verb] = Verb.BECOME
    mode: list[str]
    variables: dict[str, str]
    cwd: str
    arguments: list[str]


@dataclass(frozen=True, slots=True)
class Run:
    """Run this task (several may wait, in order) on its call frames."""

    VERB: ClassVar[Verb] = Verb.RUN
    key: int
    objects: str  # the folder of its Main's shared objects, or ""
    shm: dict[str, int]  # its call frames in /dev/shm (name -> index)
    results_to: int  # put large result frames in /dev/shm as this Main's pid (0: do not)
    frames: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Skip:
    """Drop that task if it has not started."""

    VERB: ClassVar[Verb] = Verb.SKIP
    key: int


@dataclass(frozen=True, slots=True)
class ChildOutcome:
    """How the call ``child`` of the running task ``key`` ended ("ok" or "error"), with
    its result or error frames."""

    VERB: ClassVar[Verb] = Verb.CHILD
    key: int
    child: int
    status: str
    info: dict[str, str]
    frames: tuple[Any, ...] = ()


# --- executor -> daemon ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The environment is imported; how task writes stay private ("overlay" or "copy")."""

    VERB: ClassVar[Verb] = Verb.READY
    isolation: str


@dataclass(frozen=True, slots=True)
class NoFork:
    """A template that cannot fork executors safely, and why."""

    VERB: ClassVar[Verb] = Verb.NOFORK
    why: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """That task was dropped, never started."""

    VERB: ClassVar[Verb] = Verb.SKIPPED
    key: int


@dataclass(frozen=True, slots=True)
class EnvError:
    """Importing the environment raised (the error's record and frames); it exits."""

    VERB: ClassVar[Verb] = Verb.ENV_ERROR
    info: dict[str, str]
    frames: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Out:
    """A task's output line(s) on ``stream`` (1: stdout, 2: stderr)."""

    VERB: ClassVar[Verb] = Verb.OUT
    key: int
    stream: int
    text: str


@dataclass(frozen=True, slots=True)
class Done:
    """The task ended, with its result or error frames."""

    VERB: ClassVar[Verb] = Verb.DONE
    key: int
    outcome: Outcome
    info: dict[str, str]
    shm: dict[str, int]  # result frames in /dev/shm (name -> index)
    frames: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Call:
    """The running task called a @distributed function (its Main, or this worker, places
    the call), with the call's frames."""

    VERB: ClassVar[Verb] = Verb.CALL
    key: int
    child: int  # the call's number within the task
    name: str
    platforms: list[str]
    threads: int
    retries: int
    timeout: float | None
    outputs: list[str]
    redistribution: str  # "", "auto", "relayed" or "direct" ("": its Main's)
    caller: str  # the task's function
    frames: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class CancelChild:
    """The running task cancelled that call."""

    VERB: ClassVar[Verb] = Verb.CANCEL_CHILD
    key: int
    child: int


@dataclass(frozen=True, slots=True)
class Park:
    """The running task waits for its calls (its slots may go to other tasks)."""

    VERB: ClassVar[Verb] = Verb.PARK
    key: int


@dataclass(frozen=True, slots=True)
class Unpark:
    """The running task goes on."""

    VERB: ClassVar[Verb] = Verb.UNPARK
    key: int


PipeMessage = (Context | Become | Run | Skip | ChildOutcome | Ready | NoFork | Skipped
               | EnvError | Out | Done | Call | CancelChild | Park | Unpark)
ALL_MESSAGES: tuple[type[PipeMessage], ...] = (
    Context, Become, Run, Skip, ChildOutcome, Ready, NoFork, Skipped, EnvError, Out, Done,
    Call, CancelChild, Park, Unpark)

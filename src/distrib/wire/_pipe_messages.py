"""The messages between the daemon and its executor processes: one frozen ``msgspec.Struct``
each.

A message's header is a msgpack list: its verb (the struct's tag), then its fields in the order
written here. A message with a payload has ``frames`` as its last field, which does not go in
the header: ``_pipe`` sends the frames after it and sets them on the decoded message. The types
and ``Meta`` bounds below are what ``_pipe``'s decoder checks (in C, as it builds the message).
"""

# (no ``from __future__ import annotations``: msgspec reads the types once, faster when they
# are objects than when they are strings to evaluate)
import enum
from typing import Annotated, Any, ClassVar

try:
    from msgspec import Meta, Struct
except ImportError:  # an executor of another Python version (see _pipe_plain)
    from distrib.wire._pipe_plain import Meta, Struct  # type: ignore[assignment]

from distrib.wire._limits import PIPE_MAX_OUTPUTS, PIPE_MAX_PLATFORMS
from distrib.wire._kinds import Outcome

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
    LEAVING = "leaving"


_INT31 = 1 << 31
Count = Annotated[int, Meta(ge=0, lt=_INT31)]  # a call's number, or its retries
# ``frames`` travel after the header, never in it: a header that carries one more field (a
# list, whatever it holds) fails to decode against this impossible bound.
Frames = Annotated[tuple[Any, ...], Meta(min_length=1, max_length=0)]


class _Message(Struct, frozen=True, array_like=True, forbid_unknown_fields=True, gc=False):
    """Every message: immutable, encoded as a list (its tag first) that has no more items than
    it has fields, and not tracked by the garbage collector (messages hold no cycles;
    allocating one costs less). Each says ``frozen=True`` again, for type checkers."""


# --- daemon -> executor ------------------------------------------------------------------------


class Context(_Message, frozen=True, tag=Verb.CONTEXT.value):
    """First to an executor or template: the Main's ``sys.argv`` and variables, the modules
    a template imports ahead, and the bytes a result may pickle to (0: no limit)."""

    VERB: ClassVar[Verb] = Verb.CONTEXT
    argv: list[str]
    variables: dict[str, str]
    preload: list[str]
    max_payload: int


class Become(_Message, frozen=True, tag=Verb.BECOME.value):
    """To a zygote (an interpreter started ahead; see ``worker._pool.Zygote``), with a
    socket: be the process started with these arguments, variables and working folder."""

    VERB: ClassVar[Verb] = Verb.BECOME
    mode: list[str]
    variables: dict[str, str]
    cwd: str
    arguments: list[str]


class Run(_Message, frozen=True, tag=Verb.RUN.value):
    """Run this task (several may wait, in order) on its call frames."""

    VERB: ClassVar[Verb] = Verb.RUN
    run_id: int
    objects: str  # the folder of its Main's shared objects, or ""
    shm: dict[str, int]  # its call frames in /dev/shm (name -> index)
    results_to: int  # put large result frames in /dev/shm as this Main's pid (0: do not)
    frames: Frames = ()


class Skip(_Message, frozen=True, tag=Verb.SKIP.value):
    """Drop that task if it has not started."""

    VERB: ClassVar[Verb] = Verb.SKIP
    run_id: int


class ChildOutcome(_Message, frozen=True, tag=Verb.CHILD.value):
    """How the call ``child`` of the running task ``run_id`` ended ("ok" or "error"), with
    its result or error frames."""

    VERB: ClassVar[Verb] = Verb.CHILD
    run_id: int
    child: int
    status: str
    info: dict[str, str]
    frames: Frames = ()


# --- executor -> daemon ------------------------------------------------------------------------


class Ready(_Message, frozen=True, tag=Verb.READY.value):
    """The environment is imported; how task writes stay private ("overlay" or "copy")."""

    VERB: ClassVar[Verb] = Verb.READY
    isolation: str


class NoFork(_Message, frozen=True, tag=Verb.NOFORK.value):
    """A template that cannot fork executors safely, and why."""

    VERB: ClassVar[Verb] = Verb.NOFORK
    why: str


class Skipped(_Message, frozen=True, tag=Verb.SKIPPED.value):
    """That task was dropped, never started."""

    VERB: ClassVar[Verb] = Verb.SKIPPED
    run_id: int


class EnvError(_Message, frozen=True, tag=Verb.ENV_ERROR.value):
    """Importing the environment raised (the error's record and frames); it exits."""

    VERB: ClassVar[Verb] = Verb.ENV_ERROR
    info: dict[str, str]
    frames: Frames = ()


class Out(_Message, frozen=True, tag=Verb.OUT.value):
    """A task's output line(s) on ``stream`` (1: stdout, 2: stderr)."""

    VERB: ClassVar[Verb] = Verb.OUT
    run_id: int
    stream: int
    text: str


class Done(_Message, frozen=True, tag=Verb.DONE.value):
    """The task ended, with its result or error frames."""

    VERB: ClassVar[Verb] = Verb.DONE
    run_id: int
    outcome: Outcome
    info: dict[str, str]
    shm: dict[str, int]  # result frames in /dev/shm (name -> index)
    frames: Frames = ()


class Call(_Message, frozen=True, tag=Verb.CALL.value):
    """The running task called a @distributed function (its Main, or this worker, places
    the call), with the call's frames."""

    VERB: ClassVar[Verb] = Verb.CALL
    run_id: int
    child: Count  # the call's number within the task
    name: str
    platforms: Annotated[list[str], Meta(max_length=PIPE_MAX_PLATFORMS)]
    threads: Annotated[int, Meta(ge=1, lt=_INT31)]
    retries: Count
    timeout: float | int | None  # (an int stays one: the message re-encodes as it came)
    outputs: Annotated[list[str], Meta(max_length=PIPE_MAX_OUTPUTS)]
    # "", "auto", "relayed" or "direct" ("": its Main's); a str to the code that builds it
    redistribution: Annotated[str, Meta(pattern=r"\A(?:auto|relayed|direct)?\Z")]
    caller: str  # the task's function
    frames: Frames = ()


class CancelChild(_Message, frozen=True, tag=Verb.CANCEL_CHILD.value):
    """The running task cancelled that call."""

    VERB: ClassVar[Verb] = Verb.CANCEL_CHILD
    run_id: int
    child: int


class Park(_Message, frozen=True, tag=Verb.PARK.value):
    """The running task waits for its calls (its slots may go to other tasks)."""

    VERB: ClassVar[Verb] = Verb.PARK
    run_id: int


class Unpark(_Message, frozen=True, tag=Verb.UNPARK.value):
    """The running task goes on."""

    VERB: ClassVar[Verb] = Verb.UNPARK
    run_id: int


class Leaving(_Message, frozen=True, tag=Verb.LEAVING.value):
    """After task ``run_id``'s outcome: the executor ends (and stops what that task left
    running), for ``why`` (its task left threads or processes)."""

    VERB: ClassVar[Verb] = Verb.LEAVING
    run_id: int
    why: str


PipeMessage = (Context | Become | Run | Skip | ChildOutcome | Ready | NoFork | Skipped
               | EnvError | Out | Done | Call | CancelChild | Park | Unpark | Leaving)
ALL_MESSAGES: tuple[type[PipeMessage], ...] = (
    Context, Become, Run, Skip, ChildOutcome, Ready, NoFork, Skipped, EnvError, Out, Done,
    Call, CancelChild, Park, Unpark, Leaving)

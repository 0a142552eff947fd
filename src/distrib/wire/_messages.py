"""Every message of the wire protocol, one frozen ``msgspec.Struct`` each (see
docs/protocol.md).

A message travels as a ZeroMQ multipart message: frame 0 is the msgpack header (the type tag
followed by the fields in declaration order), further frames are opaque payload bytes (pickled
calls and results, compressed blobs) that the worker daemon only moves, never unpickles. The
types written here are what ``_codec`` checks as it decodes a header (in C, as msgspec builds
the message).
"""

# (no ``from __future__ import annotations``: msgspec reads the types once, faster when they
# are objects than when they are strings to evaluate)
from typing import Annotated, Any, ClassVar

try:
    from msgspec import Meta, Struct, field
except ImportError:  # an executor of another Python version imports this module, never uses it
    from distrib.wire._pipe_plain import Meta, Struct, field  # type: ignore[assignment,no-redef]

from distrib._errors import ConfigError
from distrib.wire._kinds import Outcome as Outcome
from distrib.wire._kinds import RefusalCode as RefusalCode
from distrib.wire._kinds import payload_size as payload_size

PROTOCOL_VERSION = 17  # 17: a manifest lists the folders that hold no file (``folders``);
# 16: the Main takes back tasks queued on a worker (``Revoke``, ``Revoked``);
# 15: the Main measures each link's round trip (``Ping``, ``Pong``);
# 14: a call's payload names its function in a frame of its own;
# 13: a worker may dial its Main (``Dial``); 12: headers checked by
# msgspec (a Hello may leave out trailing defaults)
WORKER_IDS = 1 << 48  # task ids from here on are a worker's own (calls it placed or took for
# a Main, ``worker._direct``); a Main's are lower


# The frames of a payload travel after the header, never in it: a header that carries one more
# element after ``pieces`` (a list, whatever it holds) fails to decode against this bound.
Frames = Annotated[tuple[Any, ...], Meta(min_length=1, max_length=0)]
# [frame index, pieces] of the payload frames sent in pieces (``_codec.encode``), in order
Pieces = tuple[tuple[Annotated[int, Meta(ge=0)], Annotated[int, Meta(ge=2)]], ...]


class Message(Struct, frozen=True, array_like=True, forbid_unknown_fields=True, gc=False,
              kw_only=True):
    """Base of all messages: immutable, encoded as a list (its tag first), not tracked by the
    garbage collector (messages hold no cycles). ``frames`` holds the payload frames after
    the header; ``pieces``, only on the wire, which of them were cut (both come after every
    field of a message). Each message says ``frozen=True`` again, for type checkers."""

    TAG: ClassVar[int] = 0
    pieces: Pieces = ()
    frames: Frames = ()

    def __repr__(self) -> str:  # (its frames may be a gibibyte: they are not shown)
        fields = ", ".join(f"{name}={getattr(self, name)!r}"
                           for name in self.__struct_fields__[:-2])
        return f"{type(self).__name__}({fields})"


# --- handshake -------------------------------------------------------------------------------


class Hello(Message, frozen=True, tag=1):
    """Main -> worker, first message."""

    TAG: ClassVar[int] = 1
    protocol: int
    main_id: str
    name: str
    python: str
    pid: int
    forward_output: bool
    argv: list[str]  # the Main's sys.argv, for the main script's import on workers
    environ: dict[str, str]  # variables forwarded to the executors of its tasks
    environment: bytes  # its Python environment (``wire._envspec``): what its tasks import
    max_frame: int  # the largest frame it takes; larger payload frames come in pieces
    preload: list[str]  # modules it had imported: executors' templates import them once
    max_payload: int  # bytes a result may pickle to (its max_payload setting); 0: no limit
    # [name, token] of a file it wrote in /dev/shm: a worker that reads it (as the same user)
    # exchanges large frames with it through shared memory (``distrib._shm``); [] for none
    shm_probe: list[str] = field(default_factory=list)
    dist: str = ""  # the distribution its calls use: the worker fetches it now
    warm: int = 0  # executors it would like started ahead for its calls (one thread each)
    redistribution: str = "auto"  # how its tasks' own calls go by default: "auto", "relayed"
    # or "direct" (a function's own setting wins)
    delegate: str = ""  # a worker's connection: the public key of the Main it sends calls for
    # (served here with this ``main_id``; its ``Peers`` here must name the worker's key); ""
    # for a Main


def check_redistribution(name: str, raw: Any) -> str:
    """How calls made inside tasks go (``Hello.redistribution``, a function's own setting):
    "auto", "relayed" or "direct" (``ConfigError`` naming ``name`` otherwise)."""
    if raw not in ("auto", "relayed", "direct"):
        raise ConfigError(f"{name}={raw!r}: expected \"auto\" (worker to worker where a worker "
                          "can, else through the Main), \"relayed\" (through the Main) or "
                          "\"direct\" (worker to worker, never through the Main)")
    return str(raw)


class Dial(Message, frozen=True, tag=33):
    """Worker -> Main, first message on a connection the worker opened to a Main that listens
    (``distrib worker --connect``): a ROUTER cannot speak to a peer before it has heard from
    it, so the worker speaks first. The Main answers with its ``Hello``, and from there on the
    link is as one the Main opened."""

    TAG: ClassVar[int] = 33
    protocol: int
    worker_id: str
    name: str


class Welcome(Message, frozen=True, tag=2):
    """Worker -> Main, reply to Hello: who the worker is and what it offers."""

    TAG: ClassVar[int] = 2
    protocol: int
    worker_id: str
    name: str
    platform: str
    python: str
    slots: int
    pid: int
    pythons: list[str]  # the Python versions it can run tasks with (major.minor)
    environment: str  # why it cannot provide the Main's environment; empty if it can
    max_frame: int  # the largest frame it takes; larger payload frames come in pieces
    shm: bool = False  # it read the Main's shm probe: large frames may go through /dev/shm
    memory_limit: int = 0  # bytes one task may use there (--max-task-memory); 0: no limit


class Refused(Message, frozen=True, tag=3):
    """Worker -> Main: it will not serve (or no longer knows) this Main; ``reason`` is for
    people."""

    TAG: ClassVar[int] = 3
    code: RefusalCode
    reason: str


class Goodbye(Message, frozen=True, tag=4):
    """Main -> worker: this Main is leaving; drop its queued and running tasks."""

    TAG: ClassVar[int] = 4


class Heartbeat(Message, frozen=True, tag=5):
    """Either way: I am alive."""

    TAG: ClassVar[int] = 5


class Ping(Message, frozen=True, tag=34):
    """Main -> worker: answer ``Pong(sent)`` at once; ``sent`` is the Main's own clock. The
    answer's delay is the link's round trip (the relay's hops included, where there is one)."""

    TAG: ClassVar[int] = 34
    sent: float


class Pong(Message, frozen=True, tag=35):
    """Worker -> Main: the answer to ``Ping``, with its ``sent`` as it came."""

    TAG: ClassVar[int] = 35
    sent: float


class Peers(Message, frozen=True, tag=6):
    """Main -> worker: the other workers this Main uses, as ``[address, public key, name,
    slots]`` (key "" when it has none). Their tasks' calls may go to them directly; and a
    worker named here with a key may send this worker calls on this Main's behalf (``Hello``'s
    ``delegate``). Sent again when the list changes."""

    TAG: ClassVar[int] = 6
    workers: list[list[Any]]


class Placed(Message, frozen=True, tag=7):
    """Worker -> Main: the task ``parent`` made call ``child``, and the worker sent it to
    ``worker`` itself (its own name when it runs it), not through this Main. ``parent`` is
    the worker's own id (2**48 or more) for a task another worker sent it directly."""

    TAG: ClassVar[int] = 7
    parent: int
    child: int
    name: str
    worker: str


# --- tasks -----------------------------------------------------------------------------------


class TaskSpec(Struct, frozen=True, array_like=True, forbid_unknown_fields=True, gc=False):
    """One task inside a Submit.

    Its call payload is ``inline`` (small pieces carried in the header, so a batch of tiny
    tasks is one frame) followed by the next ``nframes`` frames of the message (large buffers,
    which travel without copies).
    """

    task_id: int
    dist: str
    threads: int
    timeout: float | None
    attempt: int  # earlier runs that ended with a crash or a lost worker (0: the first run)
    inline: list[bytes]
    nframes: int
    objects: dict[str, int] = field(default_factory=dict)  # shared objects it passes: name
    # -> bytes
    shm: dict[str, int] = field(default_factory=dict)  # payload frames in /dev/shm: name ->
    # index (the frame there is empty)
    depth: int = 0  # a call made inside a task: how deep (its worker runs the deepest first)


class Submit(Message, frozen=True, tag=10):
    """Main -> worker: run these tasks (batched; payload frames follow in task order)."""

    TAG: ClassVar[int] = 10
    tasks: list[TaskSpec]


class Cancel(Message, frozen=True, tag=11):
    """Main -> worker: withdraw these tasks if queued, stop them if running."""

    TAG: ClassVar[int] = 11
    task_ids: list[int]


class Revoke(Message, frozen=True, tag=36):
    """Main -> worker: give back these tasks if they have not started (they move elsewhere)."""

    TAG: ClassVar[int] = 36
    task_ids: list[int]


class Revoked(Message, frozen=True, tag=37):
    """Worker -> Main: the answer to ``Revoke``. ``given``: taken out of its queue, never to
    run there; ``kept``: started (or handed to an executor, done, or unknown): they stay."""

    TAG: ClassVar[int] = 37
    given: list[int]
    kept: list[int]


class ResultSpec(Struct, frozen=True, array_like=True, forbid_unknown_fields=True, gc=False):
    """One outcome inside a Results; its payload is ``inline`` then the next ``nframes`` frames.

    For ``Outcome.ERROR`` the payload is the pickled exception and ``info`` its
    ``ErrorRecord`` (used when the pickle does not load); other failures carry a record too.
    """

    task_id: int
    status: Outcome
    info: dict[str, str]
    inline: list[bytes]
    nframes: int
    shm: dict[str, int] = field(default_factory=dict)  # payload frames in /dev/shm (see
    # TaskSpec)


class Results(Message, frozen=True, tag=12):
    """Worker -> Main: outcomes of finished tasks (batched)."""

    TAG: ClassVar[int] = 12
    results: list[ResultSpec]


class Call(Message, frozen=True, tag=17):
    """Worker -> Main: the task ``parent`` (of this Main, running there) called a
    ``@distributed`` function: run the call (the payload frames) like one of the Main's own,
    and answer with ``ChildResult``. ``child`` is the parent's number for it."""

    TAG: ClassVar[int] = 17
    parent: int
    child: int
    name: str
    platforms: list[str]
    threads: int
    retries: int
    timeout: float | None
    outputs: list[str]  # its function's ``outputs`` globs: its result comes with files
    depth: int = 1  # how deep it is (the parent's depth + 1)
    caller: str = ""  # the parent, as errors name it, when this Main does not know it: its
    # id is then the worker's own (at least 2**48; a task another worker sent there)


class ChildResult(Message, frozen=True, tag=18):
    """Main -> worker: how the call ``child`` of task ``parent`` ended (as in a
    ``ResultSpec``: the payload frames are the pickled result or error)."""

    TAG: ClassVar[int] = 18
    parent: int
    child: int
    status: str
    info: dict[str, str]


class CancelChild(Message, frozen=True, tag=19):
    """Worker -> Main: the task ``parent`` cancelled its call ``child``."""

    TAG: ClassVar[int] = 19
    parent: int
    child: int


class Waiting(Message, frozen=True, tag=9):
    """Worker -> Main: this Main's tasks there that wait for their calls: ``parked`` lent
    their slots to other tasks; ``blocked`` hold theirs (the owner's ``--max-parked`` was
    reached); ``stuck``: every slot there is held by a blocked task, of any Main. Sent when
    it changes."""

    TAG: ClassVar[int] = 9
    parked: list[int]
    blocked: list[int]
    stuck: bool


class Output(Message, frozen=True, tag=13):
    """Worker -> Main: text a task wrote to stdout (stream 1) or stderr (stream 2)."""

    TAG: ClassVar[int] = 13
    task_id: int
    stream: int
    text: str


class EnvProgress(Message, frozen=True, tag=14):
    """Worker -> Main: news of the environment its tasks wait for (building, built), for
    people."""

    TAG: ClassVar[int] = 14
    text: str


class WorkerState(Message, frozen=True, tag=15):
    """Worker -> Main: what the worker lends this Main now, as its owner's word, policy,
    hours and load say: ``serving``, ``paused`` (no new tasks; queued ones come back deferred)
    or ``draining`` (the same, then it leaves once its running tasks are done); the slots this
    Main may use, the memory one task may use (0: no limit), and why it is paused if not by
    the owner's word ("")."""

    TAG: ClassVar[int] = 15
    state: str
    slots: int
    memory_limit: int
    why: str


class Warmed(Message, frozen=True, tag=16):
    """Worker -> Main: the executors its Hello asked for (``warm``) are started and have
    imported its workspace: ``executors`` of them (fewer if the slots it may use or free room
    allow fewer), or none and ``why`` not."""

    TAG: ClassVar[int] = 16
    dist: str
    executors: int
    why: str


# --- workspace -------------------------------------------------------------------------------


class NeedManifest(Message, frozen=True, tag=20):
    """Worker -> Main: I lack this distribution; send its manifest."""

    TAG: ClassVar[int] = 20
    dist: str


class Manifest(Message, frozen=True, tag=21):
    """Main -> worker: the distribution's manifest (one frame, msgpack) and its main module."""

    TAG: ClassVar[int] = 21
    dist: str


class NeedBlobs(Message, frozen=True, tag=22):
    """Worker -> Main: send these blobs (content hashes) of the distribution (or of the
    environment, for the wheels it ships: ``dist`` is then the environment's id)."""

    TAG: ClassVar[int] = 22
    dist: str
    hashes: list[str]


class Blobs(Message, frozen=True, tag=23):
    """Main -> worker: zlib-compressed blobs, one frame per hash, in ``hashes`` order."""

    TAG: ClassVar[int] = 23
    dist: str
    hashes: list[str]


class DistFailed(Message, frozen=True, tag=24):
    """Main -> worker: the Main cannot provide this distribution (reason given)."""

    TAG: ClassVar[int] = 24
    dist: str
    reason: str


# --- shared objects --------------------------------------------------------------------------


class NeedObjects(Message, frozen=True, tag=25):
    """Worker -> Main: send these shared objects (by name) that queued tasks pass."""

    TAG: ClassVar[int] = 25
    names: list[str]


class Objects(Message, frozen=True, tag=26):
    """Main -> worker: shared objects; ``counts[i]`` frames each, in ``names`` order, or, to
    a worker that shares its /dev/shm, ``files[i]``: the name of a file there holding it (its
    ``counts[i]`` is then 0)."""

    TAG: ClassVar[int] = 26
    names: list[str]
    counts: list[int]
    files: list[str] = field(default_factory=list)


class ObjectsFailed(Message, frozen=True, tag=27):
    """Main -> worker: the Main cannot send these shared objects (reason given)."""

    TAG: ClassVar[int] = 27
    names: list[str]
    reason: str


# --- large payloads --------------------------------------------------------------------------


class Carry(Message, frozen=True, tag=32):
    """Either way: payload frames (or pieces) of the next message, at most one piece in all,
    sent ahead of it as a message of their own, so that a large payload arrives as a stream
    of messages: each one shows that its sender is alive while the rest are on their way
    (``wire/_carry.py``)."""

    TAG: ClassVar[int] = 32


# --- inspection ------------------------------------------------------------------------------


class StatusRequest(Message, frozen=True, tag=30):
    """Anyone -> worker: report your state (no Hello needed; answers facts and counters)."""

    TAG: ClassVar[int] = 30


class Status(Message, frozen=True, tag=31):
    """Worker -> asker: name, platform, slots, load and counters."""

    TAG: ClassVar[int] = 31
    info: dict[str, Any]


ALL_MESSAGES: tuple[type[Message], ...] = (
    Hello,
    Dial,
    Welcome,
    Refused,
    Goodbye,
    Heartbeat,
    Ping,
    Pong,
    Peers,
    Placed,
    Submit,
    Cancel,
    Revoke,
    Revoked,
    Results,
    Call,
    ChildResult,
    CancelChild,
    Waiting,
    Output,
    EnvProgress,
    WorkerState,
    Warmed,
    NeedManifest,
    Manifest,
    NeedBlobs,
    Blobs,
    DistFailed,
    NeedObjects,
    Objects,
    ObjectsFailed,
    StatusRequest,
    Status,
    Carry,
)

"""Objects sent to a worker once, however many calls pass them: ``share()`` and large arguments.

A ``Shared`` is an object pickled once and named by the hash of its frames (xxh3-128: tens of
GB/s; a Main's objects are kept apart from other Mains' on a worker, so only it could be
confused by a collision). A call that passes one carries only that name; a worker that lacks
the object asks the Main for it (``NeedObjects``) and keeps it as a file, and its executors map
the file (copy-on-write, so numpy arrays come back without a copy and a task may change its
own view) when they unpickle the call (``executor._objects``). On the Main, a pending call holds
the ``Shared`` objects it passes, so a worker can always ask for them again.

Large arguments (``bytes``, numpy arrays: anything with ``nbytes`` of ``SHARE_MIN`` or more)
become ``Shared`` by themselves when their bytes were passed before (``auto_share``): hashed
at every call, so an array changed in place between two calls is sent again, while one passed
unchanged to many calls crosses to a worker at most twice (inline the first time, as an object
the second). Bytes passed once (chunks of data) travel inline, as any argument does.
"""

from __future__ import annotations

import struct
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from distrib import _serialize, _shm
from distrib._errors import SerializationError, WorkerCrashed
from distrib.wire._kinds import OBJECT_NAME

T = TypeVar("T")

SHARE_MIN = 1 << 20  # bytes: an argument this large is sent once per worker

_live: weakref.WeakValueDictionary[str, Shared[Any]] = weakref.WeakValueDictionary()
_lock = threading.Lock()
_SEEN_MAX = 4096  # large arguments whose bytes are remembered (by hash) as passed before
_seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()
_local = threading.local()  # .taken: the Shared objects the call being pickled passes
_NO_FILE = _shm.Owned([])  # a Shared's file in /dev/shm could not be written


class Shared(Generic[T]):
    """An object pickled once, to pass to many distributed calls: a worker gets its bytes
    once, and each call carries only its name (like ``ray.put`` or Dask's ``scatter``).

    Make one with ``distrib.share(obj)``. A task receives the object itself, not the handle;
    numpy arrays in it map the worker's copy without copying it. Changing ``obj`` afterwards
    changes nothing the workers see: share it again.
    """

    __slots__ = ("name", "frames", "nbytes", "_file", "__weakref__")
    _file: _shm.Owned | None  # its file in /dev/shm, once written (``in_shm``)

    name: str
    frames: list[Any]
    nbytes: int

    def __new__(cls, obj: T) -> Shared[T]:
        # One instance per content while any lives: a worker that asks for the bytes later
        # (evicted, deferred, a second worker) finds them as long as any call passes them.
        frames = _serialize.dumps(_serialize.out_of_band(obj))
        import xxhash  # (here: executors of other Pythons than the daemon's lack its build)

        digest = xxhash.xxh3_128()
        for frame in frames:
            view = memoryview(frame).cast("B")
            digest.update(struct.pack("<Q", view.nbytes))
            digest.update(view)
        name = digest.hexdigest()
        with _lock:
            found = _live.get(name)
            if found is not None:
                return found
            self = super().__new__(cls)
            self.name, self.frames, self._file = name, frames, None
            self.nbytes = sum(memoryview(f).nbytes for f in frames)
            _live[name] = self
        return self

    def in_shm(self, pid: int) -> str | None:
        """The name of a file of ``pid``'s in /dev/shm holding this object (written at the
        first call, removed when this object goes): workers on this machine link it instead
        of receiving its bytes, all of them the same pages. ``OSError`` if it cannot be
        written (/dev/shm full), and None at later calls: it is not tried again."""
        with _lock:
            if self._file is None:
                self._file = _NO_FILE
                self._file = _shm.Owned([_shm.offload_object(self.frames, pid)])
            return self.file()

    def file(self) -> str | None:
        """The name ``in_shm`` gave, if any."""
        return self._file.names[0] if self._file is not None and self._file.names else None

    def __repr__(self) -> str:
        return f"<distrib.Shared {self.name[:12]} ({self.nbytes:,} bytes)>"

    def __reduce__(self) -> tuple[Callable[[str], Any], tuple[str]]:
        taken = getattr(_local, "taken", None)
        if taken is None:
            raise SerializationError(
                f"{self!r} can only be passed to distributed calls, not pickled otherwise")
        taken[self.name] = self
        return (_resolve, (self.name,))


def share(obj: T) -> Shared[T]:
    """Pickle ``obj`` once, for many calls: pass the result where you would pass ``obj``
    (passing ``obj`` itself later also uses the worker's copy, while its bytes are the same)."""
    if _large(obj):
        _passed(obj)
    return Shared(obj)


def find(name: str) -> Shared[Any] | None:
    """The live ``Shared`` named ``name`` (a worker asks for it), if any."""
    return _live.get(name)


def dumps_call(fn: Any, named: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> tuple[list[Any], dict[str, Shared[Any]] | None]:
    """Pickle a call (``_serialize.dumps_call``): (its frames, the ``Shared`` objects it
    passes by name, or None). Large arguments passed before become ``Shared``."""
    if (args and any(map(_large, args))) or (kwargs and any(map(_large, kwargs.values()))):
        args = tuple(auto_share(a) for a in args)
        kwargs = {k: auto_share(v) for k, v in kwargs.items()}
    taken: dict[str, Shared[Any]] = {}
    _local.taken = taken
    try:
        frames = _serialize.dumps_call(fn, named, args, kwargs)
    finally:
        _local.taken = None
    return frames, taken or None


_PLAIN = frozenset({int, float, str, bool, type(None)})  # never shared: no look inside


def _large(obj: Any) -> bool:
    if type(obj) in _PLAIN:
        return False
    nbytes = len(obj) if isinstance(obj, (bytes, bytearray)) else getattr(obj, "nbytes", None)
    return isinstance(nbytes, int) and nbytes >= SHARE_MIN


def auto_share(obj: Any) -> Any:
    """A ``Shared`` of ``obj`` if it is a large buffer whose bytes were passed before, else
    ``obj`` itself."""
    if not _large(obj) or isinstance(obj, Shared):
        return obj
    return Shared(obj) if _passed(obj) else _serialize.out_of_band(obj)


def _passed(obj: Any) -> bool:
    """Whether ``obj``'s bytes were passed (or shared) before; remember them as passed.
    True for what is not one contiguous buffer (it is pickled whole anyway)."""
    import xxhash

    try:
        view = memoryview(obj).cast("B")
    except (TypeError, ValueError):
        return True
    mark = (type(obj).__qualname__, str(getattr(obj, "dtype", "")), getattr(obj, "shape", None),
            xxhash.xxh3_128_digest(view))
    with _lock:
        seen = mark in _seen
        _seen[mark] = None
        _seen.move_to_end(mark)
        if len(_seen) > _SEEN_MAX:
            _seen.popitem(last=False)
    return seen


# --- the executor side -----------------------------------------------------------------------


def _no_objects(name: str) -> list[memoryview]:
    raise FileNotFoundError(f"shared object {name}: no folder of objects for this task")


# How an object's frames are found by its name: an executor sets it at start
# (``executor._objects.load``, from the worker's copy); elsewhere none can be.
load_frames: Callable[[str], list[memoryview]] = _no_objects


def _resolve(name: str) -> Any:
    """A shared object, from the worker's copy (runs while an executor unpickles a call)."""
    if not OBJECT_NAME.fullmatch(name):
        raise WorkerCrashed(f"a call passes a shared object with a bad name: {name[:70]!r}")
    return _serialize.loads(load_frames(name))

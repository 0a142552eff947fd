"""The shared objects each Main sent this worker (``distrib.share``), as files.

One folder per Main, one file per object (named by the hash of its frames: see
``distrib._shared``), so an executor maps the file when it unpickles a call instead of
receiving the bytes with every task. Two bounds, in /dev/shm and on disk alike:

- per account (a public key's Mains together; a Main without a key alone): ``limit`` bytes. A
  new object makes room by removing the account's least recently used objects that no queued
  or running task passes, and a task whose objects cannot fit yet is deferred (its Main sends
  it again later, once its own tasks let go of theirs);
- all Mains together: ``total`` bytes. A new object makes room by removing the least recently
  used objects of any Main that no task of it passes; what still does not fit is refused, the
  error naming the bound (the room is held by other Mains' work, which goes on).

The daemon only writes the frames it received; executors read them
(``distrib.executor._objects``).

A Main on this machine that shares its ``/dev/shm`` (``distrib._shm``) writes each object once
into a file there and names it instead of sending its bytes; the daemon links that file into
the Main's folder, which for such a Main is in ``/dev/shm`` too: no copy on the way.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from msgspec import Struct, field

from distrib import _shm
from distrib._process import exists
from distrib.wire._kinds import SHM_NAME

_COUNT = _shm.OBJECT_COUNT


class Plan(Struct):
    """What a task passing shared objects needs: objects to ask its Main for, objects it
    waits for (asked, not here yet); or ``defer`` (no room yet), or an ``error``."""

    ask: list[str] = field(default_factory=list)
    waits: set[str] = field(default_factory=set)
    defer: bool = False
    error: str = ""


InUse = Callable[[bytes], set[str]]  # a Main -> the objects its queued and running tasks pass


class Objects:
    """Every Main's shared objects on this worker: at most ``limit`` bytes per account (a
    key's Mains together) and ``total`` bytes for all (None: twice ``limit``)."""

    def __init__(self, folder: Path, limit: int, total: int | None = None) -> None:
        self.folder = folder
        self.limit = limit
        self.total = 2 * limit if total is None else total
        self._held: dict[bytes, OrderedDict[str, int]] = {}  # per Main, least recent first
        self._asked: dict[bytes, dict[str, int]] = {}  # asked for, not here yet: declared size
        self._account: dict[bytes, bytes] = {}  # a Main -> its account, where not itself
        self._used: OrderedDict[tuple[bytes, str], None] = OrderedDict()  # every Main's
        # objects held, least recently used first
        self._in_shm: dict[bytes, Path] = {}  # Mains that share /dev/shm: their folder there
        self.counters = dict.fromkeys(("objects_fetched", "objects_reused", "objects_linked"), 0)

    def where(self, peer: bytes) -> Path:
        """The folder of ``peer``'s objects."""
        return self._in_shm.get(peer) or self.folder / peer.hex()

    def shares_memory(self, peer: bytes) -> None:
        """``peer`` shares this machine's /dev/shm: its objects are kept there, and it may
        name files of its own instead of sending bytes (``linked``). The folder's name is
        random and it is made here, so no one else (another user of the machine) can have
        made it first."""
        if peer in self._in_shm:
            return
        for _ in range(8):
            path = _shm.ROOT / f"distrib-w{os.getpid()}-{os.urandom(8).hex()}"
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            except OSError:
                return  # (no room there: its objects stay on disk)
            self._in_shm[peer] = path
            return

    @staticmethod
    def remove_stale() -> None:
        """Remove the /dev/shm folders of daemons that are gone (killed before they could)."""
        if not _shm.ROOT.is_dir():
            return
        for path in _shm.ROOT.glob("distrib-w*-*"):
            pid = path.name[len("distrib-w"):].split("-", 1)[0]
            try:
                mine = path.lstat().st_uid == os.geteuid()
            except OSError:  # (another daemon starting at the same time removed it)
                continue
            if pid.isdigit() and not exists(int(pid)) and mine:
                shutil.rmtree(path, ignore_errors=True)

    def held(self) -> tuple[int, int]:
        """(objects, bytes) held for all Mains."""
        return (sum(len(h) for h in self._held.values()),
                sum(sum(h.values()) for h in self._held.values()))

    def taken(self, account: bytes | None = None) -> int:
        """Bytes held and asked for, of ``account``'s Mains (None: of all Mains)."""
        return sum(sum(self._held.get(p, {}).values()) + sum(self._asked.get(p, {}).values())
                   for p in set(self._held) | set(self._asked)
                   if account is None or self._account.get(p, p) == account)

    def plan(self, peer: bytes, objects: dict[str, int], in_use: InUse,
             account: bytes = b"") -> Plan:
        """A task of ``peer`` (of ``account``; ``b""``: alone) passes ``objects`` (name ->
        declared bytes); ``in_use(main)``: the objects that Main's queued and running tasks
        pass (they stay)."""
        if account and account != peer:
            self._account[peer] = account
        account = account or peer
        held = self._held.setdefault(peer, OrderedDict())
        asked = self._asked.setdefault(peer, {})
        plan = Plan()
        for name, size in objects.items():
            if name in held:
                held.move_to_end(name)
                self._used.move_to_end((peer, name))
                self.counters["objects_reused"] += 1
            elif name in asked:  # on its way for an earlier task
                plan.waits.add(name)
                self.counters["objects_reused"] += 1
            else:
                plan.ask.append(name)
        if not plan.ask:
            return plan
        need = sum(objects[k] for k in plan.ask)
        if need > min(self.limit, self.total):
            which = ("for one Main, or one key's Mains together", self.limit, "--max-objects")
            if self.total < self.limit:
                which = ("for all Mains together", self.total, "--max-objects-total")
            plan.error = (f"the call passes {need:,} bytes of shared objects, more than this "
                          f"worker keeps {which[0]} ({which[1]:,} bytes, its {which[2]})")
            return plan
        # Room within the account: its own objects that no task of it passes go first, and a
        # task waits (deferred) for its account's other tasks to let go of theirs.
        if not self._make_room(need, self.limit, in_use, peer, objects, account):
            return Plan(defer=True)
        # Room among all Mains: any Main's objects that no task of it passes go first.
        if not self._make_room(need, self.total, in_use, peer, objects):
            plan.error = (f"the call passes {need:,} bytes of shared objects, and this worker "
                          f"keeps at most {self.total:,} bytes of them for all Mains together "
                          f"(its --max-objects-total), {self.taken():,} of which queued and "
                          "running tasks pass now; try again later, or on another worker")
            return plan
        asked.update((k, objects[k]) for k in plan.ask)
        plan.waits.update(plan.ask)
        return plan

    def _make_room(self, need: int, bound: int, in_use: InUse, peer: bytes,
                   objects: dict[str, int], account: bytes | None = None) -> bool:
        """Remove least recently used objects (of ``account``'s Mains; None: of any Main) that
        no task passes until ``need`` more bytes fit under ``bound``; whether they do."""
        taken = self.taken(account)
        if taken + need <= bound:
            return True
        keep = {peer: in_use(peer) | set(objects)}
        for main, name in list(self._used):
            if account is not None and self._account.get(main, main) != account:
                continue
            if main not in keep:
                keep[main] = in_use(main)
            if name in keep[main]:
                continue
            taken -= self._held[main][name]
            self._remove(main, name)
            if taken + need <= bound:
                return True
        return False

    def arrived(self, peer: bytes, name: str, frames: list[Any]) -> str | None:
        """Store an object that ``peer`` sent: "" if kept, None if not asked for (ignored),
        else why it is refused. ``OSError`` if it cannot be written."""
        declared = self._asked.get(peer, {}).pop(name, None)
        if declared is None:
            return None
        views = [memoryview(f.buffer if hasattr(f, "buffer") else f).cast("B") for f in frames]
        size = sum(v.nbytes for v in views)
        if size != declared:
            return f"{size:,} bytes sent for an object its calls said has {declared:,}"
        folder = self.where(peer)
        folder.mkdir(parents=True, exist_ok=True)
        write(folder / name, views)
        self._held[peer][name] = size
        self._used[(peer, name)] = None
        self.counters["objects_fetched"] += 1
        return ""

    def linked(self, peer: bytes, name: str, file: str) -> str | None:
        """Keep an object ``peer`` wrote into its /dev/shm file ``file``, by a link (no
        copy): as ``arrived``. The file must be a plain file of this user's, holding frames
        of the declared size."""
        declared = self._asked.get(peer, {}).pop(name, None)
        if declared is None:
            return None
        if peer not in self._in_shm or not SHM_NAME.fullmatch(file):
            return f"a file in /dev/shm ({file[:60]!r}) this worker may not take from this Main"
        kept = self.where(peer) / name
        os.link(_shm.ROOT / file, kept, follow_symlinks=False)  # (checked once linked)
        why, size = "", 0
        try:
            fd = os.open(kept, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                info = os.fstat(fd)
                header, frame_sizes = _shm.read_object_header(
                    os.pread(fd, _COUNT.size + 8 * 4096, 0))
                size = sum(frame_sizes)
            finally:
                os.close(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                why = f"/dev/shm/{file} is not a file of this worker's user"
            elif size != declared or header + size != info.st_size:
                why = (f"{info.st_size - header:,} bytes sent for an object its calls said "
                       f"has {declared:,}")
        except (OSError, ValueError) as exc:
            why = f"/dev/shm/{file} does not hold an object: {exc}"
        if why:
            kept.unlink(missing_ok=True)
            return why
        self._held[peer][name] = size
        self._used[(peer, name)] = None
        self.counters["objects_linked"] += 1
        return ""

    def failed(self, peer: bytes, names: list[str]) -> None:
        """``peer`` cannot send ``names``: forget that they were asked for."""
        asked = self._asked.get(peer, {})
        for name in names:
            asked.pop(name, None)

    def forget(self, peer: bytes) -> None:
        """A Main left: remove its objects."""
        for name in self._held.pop(peer, {}):
            del self._used[(peer, name)]
        self._asked.pop(peer, None)
        self._account.pop(peer, None)
        shutil.rmtree(self.where(peer), ignore_errors=True)
        self._in_shm.pop(peer, None)

    def close(self) -> None:
        """The daemon stops: its folders in /dev/shm go (memory, not disk)."""
        for peer in list(self._in_shm):
            self.forget(peer)

    def _remove(self, peer: bytes, name: str) -> None:
        del self._held[peer][name]
        del self._used[(peer, name)]
        (self.where(peer) / name).unlink(missing_ok=True)


def write(path: Path, frames: list[memoryview]) -> None:
    """One object in one file: the frame count, each frame's size, then the frames."""
    tmp = path.with_suffix(".part")
    try:
        with open(tmp, "wb") as f:
            f.write(_shm.object_header(frames))
            for view in frames:
                f.write(view)
        tmp.rename(path)
    except BaseException:  # (a full disk, say): no half-written file stays behind
        tmp.unlink(missing_ok=True)
        raise

"""Where a call made inside a task goes, decided from plain values: this worker's situation,
the other workers of its Main this worker reaches directly, and the call itself. Nothing here
does I/O: ``worker._direct`` holds the connections and applies the decisions, and
``worker._redistribution`` applies what concerns this worker (``Effect``).

A call runs where the fewest slots are busy per slot offered (here or on a worker reached
directly); when every such slot is busy, an ``auto`` call goes through its Main while the Main
has workers this one does not reach, and otherwise waits where the fewest wait.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from msgspec import Struct

from distrib.wire._messages import Message, Outcome
from distrib.wire._record import ErrorRecord


class PlacedCall(Struct, eq=False):
    """A call placed by this worker, until its outcome reaches its parent."""

    cid: int  # this worker's id for it (the task id wherever it runs)
    main: bytes  # the Main it is counted under (its peer here)
    ex_id: int  # the parent's executor
    run_id: int  # the parent's run there
    parent: int  # the parent's task id here (the Main's own below ``FIRST_ID``)
    number: int  # the parent's number for it
    name: str
    label: str  # "<parent's label>.<number>", as errors name it: leaf#1.3 is task 1's call 3
    chain: str  # "called by <parent>#<label>, called by ..."
    platforms: tuple[str, ...]
    threads: int
    retries: int
    timeout: float | None
    dist: str
    depth: int
    frames: list[Any]
    mode: str = "direct"  # or "auto": it may still go through the Main
    attempts: int = 0  # runs that crashed or were lost with their worker
    at: str = ""  # "" here, else the address of the worker it went to
    later: bool = False  # handed back: placed again at the next tick

    def __repr__(self) -> str:  # (its frames may be a gibibyte: they are not shown)
        return f"PlacedCall({self.cid}, {self.label!r}, at={self.at!r})"


class Here(Struct, frozen=True):
    """This worker, as a call of one Main finds it."""

    platform: str
    lends: bool  # it takes that Main's tasks of the call's threads now (serving, not paused
    # or draining, and its quota for that Main allows)
    load: float  # busy-or-queued slots per slot


class Reach(Struct, frozen=True):
    """Another worker of the call's Main, as this worker reaches it."""

    address: str
    ready: bool  # welcomed: calls may go there
    connect: bool  # its link is to be (re)connected now
    platform: str = ""
    offered: int = 0  # slots it offers the Main
    paused: bool = False
    stuck: bool = False  # every slot there is held by a task waiting for its calls
    sent: int = 0  # threads of the Main's calls this worker has there now


# --- actions ----------------------------------------------------------------------------------


class RunHere(Struct, frozen=True):
    """Queue the call here (its outcome comes back to ``Direct``)."""

    child: PlacedCall


class SendTo(Struct, frozen=True):
    """Send the call to the worker at ``address``."""

    child: PlacedCall
    address: str


class Deliver(Struct, frozen=True):
    """How the call ended, to its parent's executor (if the parent still runs)."""

    child: PlacedCall
    status: str  # "ok" or "error"
    info: dict[str, str]
    frames: list[Any]


class Relay(Struct, frozen=True):
    """A call placed before (handed back, or its worker lost) goes through its Main now."""

    child: PlacedCall


class ToMain(Struct, frozen=True):
    """A new call this worker does not place: its caller hands it to its Main."""

    child: PlacedCall


class CancelHere(Struct, frozen=True):
    """Withdraw or stop the call queued or running here."""

    child: PlacedCall


class Tell(Struct, frozen=True):
    """Send the Main a message (``Placed``, ``CancelChild``)."""

    main: bytes
    message: Message


Effect = RunHere | Deliver | Relay | CancelHere | Tell  # what the worker applies for ``Direct``


class Placement(Struct, frozen=True):
    """A call's place, and the links to (re)connect first (none of them can take it yet)."""

    action: RunHere | SendTo | Deliver | Relay | ToMain
    connect: tuple[str, ...] = ()


def place(child: PlacedCall, here: Here, reach: Sequence[Reach],
          others: Sequence[tuple[str, int]] | None) -> Placement:
    """Where ``child`` goes: a new call, or one handed back (``later``). ``reach`` are the
    Main's workers this one knows; ``others`` the Main's ``Peers`` (address, slots), None
    while not heard."""
    if child.later and child.attempts > child.retries:
        return Placement(Deliver(child, "error", ErrorRecord(
            "distrib.WorkerLost", f"{child.name}#{child.label} was on worker(s) that were "
            f"lost; tried {child.attempts} time(s)").to_wire(), []))
    connect = tuple(r.address for r in reach if r.connect)
    fits = matches(here.platform, child.platforms) and here.lends
    best, best_load = ("" if fits else None), (here.load if fits else 1e9)
    for r in reach:
        if (not r.ready or r.connect or r.paused or r.stuck or r.offered < child.threads
                or not matches(r.platform, child.platforms)):
            continue
        load = r.sent / r.offered
        if load < best_load:
            best, best_load = r.address, load
    if best is None or (best_load >= 1 and child.mode == "auto"
                        and relay_slots(others, {r.address for r in reach if r.ready})):
        # (only the Main can place it; or the Main may have room elsewhere)
        return Placement(Relay(child) if child.later else ToMain(child), connect)
    # (a free slot here or on a worker reached directly; else queued where the fewest wait)
    return Placement(RunHere(child) if best == "" else SendTo(child, best), connect)


def relay_slots(others: Sequence[tuple[str, int]] | None, ready: set[str]) -> int:
    """Slots of the Main's other workers this one cannot send calls to itself (all of them,
    while its ``Peers`` are not heard)."""
    if others is None:
        return 1
    return sum(slots for address, slots in others if address not in ready)


def delivery(child: PlacedCall, outcome: Outcome, info: dict[str, str],
             frames: list[Any]) -> Deliver:
    """How ``child`` ended (for good), as its parent hears it."""
    where = f"{child.name}#{child.label}"
    if outcome is Outcome.OK:
        return Deliver(child, "ok", {}, frames)
    if outcome in (Outcome.ERROR, Outcome.ENV_ERROR):
        return Deliver(child, "error", info, frames)
    if outcome is Outcome.CRASHED:
        record = ErrorRecord(
            "distrib.WorkerCrashed", f"{where} crashed: {ErrorRecord.from_wire(info).message}"
            f"; tried {child.attempts + 1} time(s), retries={child.retries}")
    elif outcome is Outcome.TIMEOUT:
        record = ErrorRecord("distrib.TaskTimeout", f"{where} ran past its timeout of "
                             f"{child.timeout} s and was stopped")
    else:
        record = ErrorRecord("distrib.Cancelled", f"{where} was cancelled")
    return Deliver(child, "error", record.to_wire(), [])


def matches(platform: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(platform, g) for g in globs)

"""The worker core driven by random sequences of events, as its bugs were found (a parking bug
showed in one integration run of eight): submits from several Mains of 1 or 2 threads and
several depths, outcomes, executor deaths, calls, parks and resumes, cancels, quotas, the
owner's pause, resume and drain, Mains leaving, ticks with the clock moving on. Mains A and B
connect with one key (their quota, fair share and queued bytes are that key's, together); C
has none (it counts alone).

The machine plays the daemon: it carries out the actions the way the daemon does (a ``Spawn``
is answered later by ``ExecutorReady``, a ``Skip`` by ``TaskSkipped``, an ``Admit`` at once by
``TaskQueued``), and ends every step with a ``Turn``, as the daemon's loop does. After every
step it checks ``Core.check_invariants``, that no task is reported twice or reported and still
held, that ``Drained`` comes only when nothing runs, and the fair share the code guarantees.

The fair share, between accounts (a key's Mains together, or a Main without a key). Running
tasks are never stopped for another account, so one that came first may hold every slot while
others wait; what the core guarantees is how it *starts* tasks: each free slot goes to the
account holding the fewest slots for its weight (``Queues.next_runnable``), among those with
a task that fits. So, after a turn that started tasks of account P (the last one of ``t``
threads), P held no more, for its weight, before that last start than any other account Q
still holds now, if Q still has a queued task that could have started in its place (ready, of
at most ``t`` threads, within Q's quota):

    (held[P] - t) / weight[P] <= held[Q] / weight[Q]

and no slot stays free while a queued task that fits could start (the core is work
conserving). Both hold when no depth rule is in force (no task parked or holding its slots
while waiting for its calls: ``_depth_floor`` is None), and the worker is serving.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from distrib.wire._messages import Outcome
from distrib.worker._core import Core
from distrib.worker._events import (
    Action,
    Admit,
    CancelAsked,
    DistReady,
    Drained,
    Event,
    ExecutorDied,
    ExecutorReady,
    GaveBack,
    Kill,
    MainLeft,
    OwnerStateChanged,
    OwnerWord,
    QuotaSet,
    Report,
    Resize,
    RevokeAsked,
    Skip,
    Spawn,
    TaskCalled,
    TaskDone,
    TaskParked,
    TaskQueued,
    TaskResumed,
    TaskSkipped,
    TaskSubmitted,
    Tick,
    Turn,
)
from distrib.worker._corestate import ExecutorRecord
from distrib.worker._state import QueuedTask

MAINS = [b"A", b"B", b"C"]
ACCOUNT = {b"A": b"key K", b"B": b"key K", b"C": b""}  # A and B: one key's Mains
CRASH = {"type": "distrib.WorkerCrashed", "message": "died", "traceback": ""}


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = Core(4, idle_after=3.0, max_parked=1)
        self.now = 0.0
        self.next_id = 0
        self.starting: list[int] = []  # spawned executors that have not said ready
        self.slow: list[int] = []  # of those, the ones that say it at the end of this step
        self.skips: list[tuple[int, int]] = []  # asked to skip, not answered
        self.reported: set[int] = set()  # id() of the tasks reported
        self.submitted: list[tuple[bytes, int]] = []
        self.tasks: list[QueuedTask] = []  # (kept alive: ``reported`` holds their id())
        self.quotas: dict[bytes, tuple[int | None, float]] = {}  # per key, as its file says
        self.do(DistReady("d"))
        for peer in MAINS:  # (their Hellos)
            self.tell_quota(peer)

    def tell_quota(self, peer: bytes) -> None:
        """``peer``'s key's quota, as the daemon tells the core at each Hello and as the
        authorized keys change."""
        limit, weight = self.quotas.get(ACCOUNT[peer] or peer, (None, 1.0))
        self.do(QuotaSet(peer, limit, weight, ACCOUNT[peer]))

    # --- the daemon's side ---------------------------------------------------------------

    def do(self, event: Event) -> None:
        actions = self.core.handle(event, self.now)
        self.core.check_invariants()
        self.carry_out(actions)

    def carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Spawn):
                self.starting.append(action.ex_id)
            elif isinstance(action, Kill):
                if action.ex_id in self.starting:
                    self.starting.remove(action.ex_id)
                self.skips = [s for s in self.skips if s[0] != action.ex_id]
            elif isinstance(action, Skip):
                self.skips.append((action.ex_id, action.run_id))
            elif isinstance(action, Admit):
                self.do(TaskQueued(action.task))
            elif isinstance(action, Report):
                assert id(action.task) not in self.reported, (
                    f"task {action.task.task_id} reported twice")
                self.reported.add(id(action.task))
            elif isinstance(action, GaveBack):  # (back to its Main: it must not run here)
                for task_id in action.given:
                    task = next(t for t in self.tasks if t.task_id == task_id)
                    assert task.peer == action.peer, "a task given back to another Main"
                    assert id(task) not in self.reported, f"task {task_id} given back twice"
                    self.reported.add(id(task))
            elif isinstance(action, Drained):
                assert self.core.state == "draining" and not self.core.running_any()

    def turn(self) -> None:
        """The end of a turn of the daemon's loop, and the fair-share check. Executors
        spawned a step ago say ready now, if no rule had them say it earlier."""
        core = self.core
        for ex_id in self.slow:
            if ex_id in self.starting:
                self.starting.remove(ex_id)
                self.do(ExecutorReady(ex_id))
        self.slow = list(self.starting)
        fair = core.state == "serving" and core._depth_floor(self.now) is None
        last_run_id = core._next_run_id
        actions = core.handle(Turn(), self.now)
        core.check_invariants()
        if fair:
            check_fair_share(core, last_run_id)
        self.carry_out(actions)

    def executors(self) -> list[ExecutorRecord]:
        """The executors with a task, in a fixed order (for the draws)."""
        return sorted((ex for ex in self.core.executors.values() if ex.runs),
                      key=lambda ex: ex.ex_id)

    # --- the events ------------------------------------------------------------------------
    #
    # One rule draws the next event, each kind as often as its weight says (a task comes,
    # ends, calls and waits more often than a Main leaves or the owner pauses), among those
    # that can happen now; a plain rule per event would have Hypothesis draw them alike.

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        kinds = [kind for kind, weight, possible in EVENTS if possible(self)
                 for _ in range(weight)]
        getattr(self, data.draw(st.sampled_from(kinds)))(data)
        self.turn()

    def submit(self, data: st.DataObject) -> None:
        self.next_id += 1
        task = QueuedTask(data.draw(st.sampled_from(MAINS)), self.next_id, "d",
                          data.draw(st.sampled_from([1, 1, 2])), None, [b"x"],
                          depth=data.draw(st.sampled_from([0, 0, 1, 2])))
        self.submitted.append((task.peer, task.task_id))
        self.tasks.append(task)
        self.do(TaskSubmitted(task))

    def executor_ready(self, data: st.DataObject) -> None:
        ex_id = data.draw(st.sampled_from(self.starting))
        self.starting.remove(ex_id)
        self.do(ExecutorReady(ex_id))

    def done(self, data: st.DataObject) -> None:
        ex = data.draw(st.sampled_from(self.finishing()))
        outcome = data.draw(st.sampled_from([Outcome.OK, Outcome.OK, Outcome.ERROR]))
        self.do(TaskDone(ex.ex_id, ex.runs[0].run_id, outcome, {}, []))

    def died(self, data: st.DataObject) -> None:
        ex_id = data.draw(st.sampled_from(sorted(self.core.executors)))
        if ex_id in self.starting:
            self.starting.remove(ex_id)
        self.do(ExecutorDied(ex_id, CRASH))

    def called(self, data: st.DataObject) -> None:
        ex = data.draw(st.sampled_from(self.calling()))
        self.do(TaskCalled(ex.ex_id, ex.runs[0].run_id))

    def park(self, data: st.DataObject) -> None:
        ex = data.draw(st.sampled_from(self.parking()))
        self.do(TaskParked(ex.ex_id, ex.runs[0].run_id))

    def resume(self, data: st.DataObject) -> None:
        ex = data.draw(st.sampled_from(self.waiting()))
        self.do(TaskResumed(ex.ex_id, ex.runs[0].run_id))

    def skipped(self, data: st.DataObject) -> None:
        ex_id, run_id = data.draw(st.sampled_from(self.skips))
        self.skips.remove((ex_id, run_id))
        ex = self.core.executors.get(ex_id)
        if ex is not None and any(r.run_id == run_id for r in ex.runs):
            self.do(TaskSkipped(ex_id, run_id))

    def cancel(self, data: st.DataObject) -> None:
        self.do(CancelAsked(*data.draw(st.sampled_from(self.submitted))))

    def revoke(self, data: st.DataObject) -> None:
        """A Main takes tasks back: its own, another Main's (a hostile one), or unknown."""
        asked = data.draw(st.lists(st.sampled_from(self.submitted), max_size=4))
        self.do(RevokeAsked(data.draw(st.sampled_from(MAINS)),
                            tuple(task_id for _, task_id in asked) + (10_000,)))

    def owner(self, data: st.DataObject) -> None:
        state: OwnerWord = data.draw(st.sampled_from(["serving", "paused", "draining"]))
        self.do(OwnerStateChanged(state, data.draw(st.booleans())))

    def main_left(self, data: st.DataObject) -> None:
        peer = data.draw(st.sampled_from(MAINS))
        self.do(MainLeft(peer))
        self.tell_quota(peer)  # (it, or a new Main of the same key, says Hello)

    def quota(self, data: st.DataObject) -> None:
        """The authorized keys changed: the key's quota, told for each Main of it."""
        peer = data.draw(st.sampled_from(MAINS))
        self.quotas[ACCOUNT[peer] or peer] = (data.draw(st.sampled_from([None, 1, 2, 3])),
                                              data.draw(st.sampled_from([1.0, 1.0, 2.0])))
        for member in MAINS:
            if (ACCOUNT[member] or member) == (ACCOUNT[peer] or peer):
                self.tell_quota(member)

    def resize(self, data: st.DataObject) -> None:
        self.do(Resize(data.draw(st.sampled_from([2, 4, 5]))))

    def tick(self, data: st.DataObject) -> None:
        self.now += data.draw(st.sampled_from([0.01, 0.04, 0.3, 1.2, 4.0]))
        self.do(Tick())

    # (which executors can send what: a task reports, calls or waits once it was sent)
    def finishing(self) -> list[ExecutorRecord]:
        return [ex for ex in self.executors() if ex.ready and not (ex.parked or ex.blocked)]

    def calling(self) -> list[ExecutorRecord]:
        return [ex for ex in self.executors() if ex.ready and not ex.nests]

    def parking(self) -> list[ExecutorRecord]:
        return [ex for ex in self.executors() if ex.nests and not (ex.parked or ex.blocked)]

    def waiting(self) -> list[ExecutorRecord]:
        return [ex for ex in self.executors() if ex.parked or ex.blocked]

    @invariant()
    def nothing_reported_is_held(self) -> None:
        held = {id(run.task) for ex in self.core.executors.values() for run in ex.runs}
        queued = {id(task) for task in self.core.queues.tasks()}
        assert not (self.reported & (held | queued)), "a reported task is still held"


EVENTS: list[tuple[str, int, Callable[[CoreMachine], object]]] = [
    ("submit", 8, lambda m: True),
    ("executor_ready", 3, lambda m: m.starting),
    ("done", 6, lambda m: m.finishing()),
    ("died", 1, lambda m: m.core.executors),
    ("called", 4, lambda m: m.calling()),
    ("park", 5, lambda m: m.parking()),
    ("resume", 1, lambda m: m.waiting()),
    ("skipped", 3, lambda m: m.skips),
    ("cancel", 1, lambda m: m.submitted),
    ("revoke", 2, lambda m: m.submitted),
    ("owner", 1, lambda m: m.core.state != "draining"),  # (draining is the owner's last word)
    ("main_left", 1, lambda m: True),
    ("quota", 1, lambda m: True),
    ("resize", 1, lambda m: True),
    ("tick", 3, lambda m: True),
]


def check_fair_share(core: Core, last_run_id: int) -> None:
    """See the module's docstring."""
    held = core.held_by_account()
    accounts = sorted({core.account(p) for p in MAINS})
    weight = {a: core.weights.get(a, 1.0) for a in accounts}
    started: dict[bytes, tuple[int, int]] = {}  # account -> (run id, threads) of its last start
    for ex in core.executors.values():
        if ex.runs and ex.runs[0].run_id > last_run_id:
            run = ex.runs[0]
            account = core.account(run.task.peer)
            if account not in started or started[account][0] < run.run_id:
                started[account] = (run.run_id, run.task.threads)

    def could_start(account: bytes, most: int) -> list[QueuedTask]:
        limit = core.limits.get(account, core.capacity)
        return [t for t in core.queues.tasks() if core.account(t.peer) == account
                and core._runnable(t) and t.threads <= most
                and held.get(account, 0) + t.threads <= limit]

    for p, (_, threads) in started.items():
        for q in accounts:
            if q != p and could_start(q, threads):
                assert (held[p] - threads) / weight[p] <= held.get(q, 0) / weight[q], (
                    f"{p!r} got a task holding {held[p] - threads} slots while {q!r} "
                    f"holds {held.get(q, 0)} and waits ({core.weights})")
    free = core.capacity - core.busy
    for q in accounts:
        waiting = could_start(q, free)
        assert not waiting, (
            f"{free} slots free, yet task {waiting[0].task_id} of {q!r} did not start")


CoreMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, derandomize=True)
TestCore = CoreMachine.TestCase

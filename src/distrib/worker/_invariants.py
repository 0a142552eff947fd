"""What the worker core's state must satisfy after every event: ``Core.check_invariants``
(tests call it; the daemon does not pay for it)."""

from __future__ import annotations

from distrib.worker._corestate import CoreState, ExecutorRecord


def check(core: CoreState) -> None:
    """Raise AssertionError, saying what is wrong, if ``core``'s state contradicts itself."""
    execs = list(core.executors.values())
    running = [ex for ex in execs if ex.runs]
    busy = sum(ex.key.threads for ex in running if not ex.parked)
    assert core.busy == busy, (
        f"busy is {core.busy} slots, but the un-parked executors with a task hold {busy}")
    parked = sum(ex.parked for ex in execs)
    assert parked <= core.max_parked, f"{parked} executors parked, over max_parked " \
                                      f"{core.max_parked}"
    # Over the slots only by a task that went on after waiting (its slots were lent), or a
    # withdrawn one that became the running task (stopped or skipped shortly).
    excused = sum(ex.key.threads for ex in running
                  if not ex.parked and (ex.nests or ex.runs[0].withdrawn is not None))
    assert core.busy - excused <= core.most, (
        f"{core.busy} slots busy ({excused} excused), over the most offered, {core.most}")
    seen: dict[int, int] = {}  # id(task) -> executor
    run_ids: set[int] = set()
    for ex in execs:
        assert ex.ex_id <= core._next_ex, f"executor {ex.ex_id} was never spawned"
        for run in ex.runs:
            assert id(run.task) not in seen, (
                f"task {run.task.task_id} of {run.task.peer!r} handed to executors "
                f"{seen[id(run.task)]} and {ex.ex_id}")
            seen[id(run.task)] = ex.ex_id
            assert run.run_id not in run_ids, f"run id {run.run_id} used twice"
            run_ids.add(run.run_id)
            assert run.task.threads == ex.key.threads, (
                f"task {run.task.task_id} needs {run.task.threads} threads, handed to an "
                f"executor of {ex.key.threads}")
        if ex.runs:
            assert ex.idle_since is None, f"executor {ex.ex_id} has a task, yet is idle"
        else:
            assert not (ex.parked or ex.blocked or ex.nests), (
                f"executor {ex.ex_id} has no task, yet waits for calls or nests")
        assert not (ex.parked and ex.blocked), f"executor {ex.ex_id} parked and blocked"
        if ex.parked or ex.blocked:
            assert ex.runs[0].task.peer == ex.waiter, (
                f"executor {ex.ex_id} waits for {ex.waiter!r}, runs a task of "
                f"{ex.runs[0].task.peer!r}")
        if ex.nests:
            assert all(r.withdrawn is not None for r in list(ex.runs)[1:]), (
                f"executor {ex.ex_id} nests, yet a task is handed to run after its own")
    _check_accounts(core, running)
    queued = core.queues.tasks()
    for task in queued:
        assert id(task) not in seen, (
            f"task {task.task_id} of {task.peer!r} is both queued and handed to executor "
            f"{seen[id(task)]}")
    assert len({id(t) for t in queued}) == len(queued), "a task is queued twice"
    for peer in core.queues.peers():
        nbytes = sum(t.nbytes for t in queued if t.peer == peer)
        assert core.queues.queued_bytes(peer) == nbytes, (
            f"{peer!r} has {nbytes} payload bytes queued, counted "
            f"{core.queues.queued_bytes(peer)}")
    if core.paused:
        assert not queued, f"{len(queued)} tasks queued while {core.state}"
    for ex_id in core._unsent:
        assert ex_id in core.executors, f"runs to send to executor {ex_id}, which is gone"


def _check_accounts(core: CoreState, running: list[ExecutorRecord]) -> None:
    """The per-key rule: the Mains of one account (a public key's) hold, together, no more
    slots than its quota, but for tasks that began before the quota was last set (a lowered
    quota lets running tasks finish) and the excused ones above."""
    for peer, account in core.accounts.items():
        assert peer in core.members.get(account, ()), (
            f"Main {peer!r} counts in account {account!r}, which does not list it")
    for account, members in core.members.items():
        assert members, f"account {account!r} is listed with no Main"
        assert all(core.account(p) == account for p in members), (
            f"account {account!r} lists a Main of another account")
    for account, limit in core.limits.items():
        assert account in core.members, f"a quota for {account!r}, which has no Main"
        heads = [ex.runs[0] for ex in running
                 if not ex.parked and not ex.nests and ex.runs[0].withdrawn is None
                 and core.account(ex.runs[0].task.peer) == account]
        held = sum(run.task.threads for run in heads)
        since = core.quota_since.get(account, 0)
        late = [run.run_id for run in heads if run.run_id > since]
        assert held <= limit or not late, (
            f"account {account!r} holds {held} slots over its quota of {limit}, with runs "
            f"{late} started since the quota was set")

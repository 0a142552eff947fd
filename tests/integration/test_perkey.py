"""Bounds per key and in total, with real daemons: the Mains opened with one key share that
key's quota (five Mains of a ``slots=1`` key hold one slot), and the shared objects of all
Mains together stay under ``--max-objects-total`` (what does not fit fails at once, naming
it; the other Mains' work goes on)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from distrib.wire import _keys
from tests.helpers import Workspace, ended, finish, wait_for
from tests.integration.test_keys import keygen, keyed_worker
from tests.integration.test_lending import JOBS, most_at_once, runs, start_main

# Tasks here meet the test through files of its own (logs, a release file): workers lend
# without a sandbox, which would hide them (test_sandbox.py tests the sandbox).
UNBOXED = ("--no-sandbox",)


def test_five_mains_of_a_one_slot_key_hold_one_slot_together(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    five = keygen(tmp_path / "five.key")
    worker, _ = keyed_worker(start_worker, tmp_path, "lender", [f"{five} five slots=1"],
                             threads=4, extra=UNBOXED)
    workspace.write("main.py", JOBS)
    log = tmp_path / "runs.log"
    address = f"{worker.address} {worker.public_key}"
    mains = [start_main(workspace, ["2", "0.15", str(log)], address,
                        {"DISTRIB_KEY": str(tmp_path / "five.key"), "MAIN": f"m{i}"})
             for i in range(5)]
    outs = []
    try:
        # Several Mains of the key are served at once, and together hold one slot.
        def served() -> list[dict[str, object]]:
            rows = [x for x in worker.status()["served"] if x["key"] == five[:8]]
            assert sum(int(str(x["held"])) for x in rows) <= 1, rows
            return rows if len(rows) >= 2 else []

        wait_for(served, what="two Mains of the key served at once")
        outs = [finish(main) for main in mains]
    finally:
        for main in mains:
            with ended(main):
                pass
    for out, err in outs:
        assert out.splitlines() == ["DONE True"], err[-3000:]
    done = runs(log)
    assert sorted(r[3] for r in done) == sorted(f"m{i}" for i in range(5) for _ in range(2))
    assert most_at_once([(start, end) for _, start, end, _ in done]) == 1
    assert "at most 1 slot(s)" in worker.log()


HOLDS = """
    import os, sys, time
    import distrib
    from distrib import distributed

    @distributed
    def hold(data, release):
        deadline = time.time() + 120
        while not os.path.exists(release) and time.time() < deadline:
            time.sleep(0.05)
        return len(data)

    @distributed
    def double(x):
        return 2 * x

    if __name__ == "__main__":
        i, release, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        try:
            data = distrib.share(bytes([i]) * 6_000_000)
            said = f"OK {hold(data, release).unwrap(timeout=180)}"
        except distrib.SerializationError as exc:
            said = f"ERROR {exc}"
        with open(out, "w") as f:
            f.write(said)
        print(said)
        print("DOUBLE", double(21).unwrap(timeout=120))
    """


def test_shared_objects_of_five_mains_stay_under_the_total(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    # 6 MB each: three fit under 20M; while their tasks hold them, two Mains hear why not.
    worker = start_worker(threads=2, extra=("--max-objects", "8M",
                                            "--max-objects-total", "20M", *UNBOXED))
    workspace.write("main.py", HOLDS)
    release = tmp_path / "release"
    said = [tmp_path / f"said-{i}" for i in range(5)]
    mains = [start_main(workspace, [str(i), str(release), str(said[i])], worker.address)
             for i in range(5)]
    outs = []
    try:
        def refused() -> list[str]:
            errors = [p.read_text() for p in said if p.exists()]
            return errors if len(errors) == 2 else []

        errors = wait_for(refused, timeout=120, what="two Mains refused")
        for error in errors:
            assert error.startswith("ERROR worker w0: the call passes 6,0"), error
            assert "20,971,520 bytes" in error and "--max-objects-total" in error, error
        # (a Main's object may still be on its way in as the others are refused: the refusal
        # counts it, the status once it is stored)
        count, nbytes = wait_for(lambda: (o := worker.status()["objects"])[0] == 3 and o,
                                 timeout=120, what="the three objects that fit, stored")
        assert 18_000_000 <= nbytes <= 20 << 20
        release.touch()
        outs = [finish(main) for main in mains]
    finally:
        for main in mains:
            with ended(main):
                pass
    lines = sorted(line for out, _ in outs for line in out.splitlines())
    assert lines.count("DOUBLE 42") == 5, outs
    assert lines.count("OK 6000000") == 3, outs
    assert sum(line.startswith("ERROR") for line in lines) == 2, outs
    assert worker.status()["objects"] == [0, 0]  # (the Mains left)


def test_the_mains_of_one_key_share_its_shared_objects_limit(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    # 6 MB each under 8M per key: a second Main of the key waits for the first one's task to
    # let go of its object; a Main of another key does not.
    pair, solo = keygen(tmp_path / "pair.key"), keygen(tmp_path / "solo.key")
    keygen(tmp_path / "lender.key")
    admin = _keys.generate()  # the test's own key, for status queries
    (tmp_path / "authorized").write_text(f"{pair} pair\n{solo} solo\n{admin.public} test\n")
    worker = start_worker(threads=2, name="lender", extra=(
        "--key", str(tmp_path / "lender.key"), "--authorized-keys", str(tmp_path / "authorized"),
        "--max-objects", "8M", "--max-objects-total", "100M", *UNBOXED))
    worker.status_key = admin
    workspace.write("main.py", HOLDS)
    release = tmp_path / "release"
    address = f"{worker.address} {worker.public_key}"

    def start(i: int, key: str) -> subprocess.Popen[str]:
        return start_main(workspace, [str(i), str(release), str(tmp_path / f"said-{i}")],
                          address, {"DISTRIB_KEY": str(tmp_path / f"{key}.key")})

    mains = [start(0, "pair")]
    outs = []
    try:
        wait_for(lambda: worker.status()["objects"][0] == 1, what="the first object kept")
        mains += [start(1, "pair"), start(2, "solo")]
        wait_for(lambda: worker.status()["deferred"] >= 1 and worker.status()["objects"][0] == 2,
                 what="the other key's object kept, the same key's deferred")
        assert worker.status()["objects"][1] <= 2 * 6_100_000
        release.touch()
        outs = [finish(main) for main in mains]
    finally:
        for main in mains:
            with ended(main):
                pass
    for out, err in outs:
        assert out.splitlines() == ["OK 6000000", "DOUBLE 42"], err[-3000:]

"""Several Mains on the same one-slot workers (real daemons): each gets its share of the
slot-seconds while all of them want more, and a Main killed mid-run frees its slots for the
others at once, not after the heartbeat timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers import PYTHON, Workspace, ended, finish, wait_for

NAPS = """
    import os, sys, time
    from distrib import distributed, gather

    @distributed
    def nap(seconds, log, main):
        start = time.time()
        time.sleep(seconds)
        with open(log, "a") as f:
            f.write(f"{main} {start} {time.time()}\\n")

    if __name__ == "__main__":
        count, seconds, log, main = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
        gather([nap(seconds, log, main) for _ in range(count)], timeout=600)
        print("DONE", flush=True)
    """

WORKERS = 3
SECONDS = 0.25  # each task's sleep (long beside a task's cost here, on busy cores)


def runs(log: Path) -> list[tuple[str, float, float]]:
    return [(who, float(s), float(e)) for who, s, e in
            (line.split() for line in log.read_text().splitlines() if line.count(" ") == 2)]


def held(done: list[tuple[str, float, float]], who: set[str], lo: float, hi: float) -> float:
    """Slot-seconds the Mains ``who`` held between ``lo`` and ``hi``."""
    return sum(max(0.0, min(e, hi) - max(s, lo)) for w, s, e in done if w in who)


def test_three_mains_share_the_workers_and_a_killed_one_frees_its_slots_at_once(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    workers = [start_worker(threads=1, extra=("--no-sandbox",)) for _ in range(WORKERS)]
    workspace.write("main.py", NAPS)
    log = tmp_path / "runs.log"
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": ",".join(w.address for w in workers)}

    def main(name: str, count: int) -> subprocess.Popen[str]:
        return subprocess.Popen([PYTHON, "main.py", str(count), str(SECONDS), str(log), name],
                                cwd=workspace.root, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    with ended(main("M0", 600)) as m0, ended(main("M1", 30)) as m1, \
            ended(main("M2", 30)) as m2:
        # All three run on the workers; then a few seconds of all wanting more.
        wait_for(lambda: log.exists() and {w for w, _, _ in runs(log)} == {"M0", "M1", "M2"},
                 timeout=120, what="a task of each Main run")
        shared_from = max(min(s for w, s, _ in runs(log) if w == m) for m in ("M0", "M1", "M2"))
        wait_for(lambda: time.time() > shared_from + 12 * SECONDS, what="rounds shared")
        m0.send_signal(signal.SIGKILL)  # (no goodbye: its connections close)
        killed = time.time()
        m0.wait(30)
        finish(m1, timeout=300)
        finish(m2, timeout=300)
    for w in workers:
        assert w.proc.poll() is None, w.log()
    done = runs(log)
    # Shares while all three wanted more: a third each (generous bounds: busy cores, and a
    # task is a twelfth of a Main's share of the window).
    total = held(done, {"M0", "M1", "M2"}, shared_from, killed)
    shares = {m: held(done, {m}, shared_from, killed) / total for m in ("M0", "M1", "M2")}
    assert all(0.18 < s < 0.5 for s in shares.values()), shares
    used_before = total / (WORKERS * (killed - shared_from))
    # After the kill, the other two hold M0's slot too: well before the heartbeat timeout
    # (10 s), as they would not if M0's queued tasks kept their turns.
    lo = killed + 2 * SECONDS
    hi = min(max(e for w, _, e in done if w == m) for m in ("M1", "M2")) - SECONDS
    assert hi - lo >= 2 * SECONDS, (lo, hi)
    used_after = held(done, {"M1", "M2"}, lo, hi) / (WORKERS * (hi - lo))
    assert used_after > 0.85 * used_before, (used_before, used_after)
    assert "closed its connection without a goodbye" in "".join(w.log() for w in workers)

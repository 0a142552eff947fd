"""Progress of a run, as a user sees it: a bar under a terminal, one summary line without."""

from __future__ import annotations

import os
import pty
import re
import subprocess

import pytest

from tests.helpers import PYTHON, Worker, Workspace, ended

SCRIPT = """
    import sys, time
    import distrib
    from distrib import distributed

    @distributed
    def work(i):
        time.sleep(0.01)
        if i % 50 == 7:
            raise ValueError(i)
        return i

    @distributed
    def rest(i):
        time.sleep(0.02)
        return i

    if __name__ == "__main__":
        if sys.argv[1] == "progress":
            print("OK", sum(r.ok() for r in distrib.progress(work.map(range(200)))))
        elif sys.argv[1] == "two":  # two bars at once: a row each
            first, second = work.map(range(100, 200), progress=True), rest.map(range(60),
                                                                              progress=True)
            print("OK", sum(r.wait(60) and r.ok() for r in first + second))
        elif sys.argv[1] == "logs":  # lines written while a bar is drawn, then after it
            import logging, warnings
            calls = rest.map(range(60), progress=True)
            calls[5].wait(60)
            logging.getLogger("distrib").warning("a log line while the bar is drawn")
            warnings.warn("a warning while the bar is drawn")
            print("SUM", sum(distrib.gather(calls)))
            print("AFTER the results", file=sys.stderr)
        elif sys.argv[1] == "loop":  # as they finish, then what the script writes next
            print("OK", sum(r.ok() for r in distrib.as_completed(rest.map(range(60),
                                                                        progress=True))))
            print("AFTER the results", file=sys.stderr)
        elif sys.argv[1] == "unwrap":  # a plain loop over the results, then the next line
            print("SUM", sum([r.unwrap(60) for r in rest.map(range(60), progress=True)]))
            print("AFTER the results", file=sys.stderr)
        elif sys.argv[1] == "gather":
            print("SUM", sum(distrib.gather(work.map(range(8, 48)), progress=True)))
        else:  # the script ends as the last results arrive: the summary still comes
            print("SUM", sum(distrib.gather(work.map(range(8, 48), progress=True))))
    """


def on_a_terminal(workspace: Workspace, worker: Worker, how: str) -> tuple[list[str], str]:
    """Run the script with stderr on a terminal: the lines of the screen, and stdout."""
    master, slave = pty.openpty()
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir), "COLUMNS": "150",
           "DISTRIB_WORKERS": worker.address}
    with ended(subprocess.Popen([PYTHON, "main.py", how], cwd=workspace.root, env=env,
                                stdin=slave, stdout=subprocess.PIPE, stderr=slave)) as main:
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)  # (EIO once the script has exited)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        out, _ = main.communicate(timeout=120)
        assert main.returncode == 0
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    return [line for line in re.split(r"[\r\n]+", screen) if line.strip()], out.decode()


def test_a_bar_under_a_terminal_ends_at_all_done_with_failures_counted(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", SCRIPT)
    lines, out = on_a_terminal(workspace, worker, "progress")
    assert re.search(r"^work .* 200/200 4 failed [\d,.]+/s .* slots \d+/2", lines[-1]), \
        lines[-5:]
    assert out.splitlines() == ["OK 196"]


def test_two_bars_at_once_each_keep_a_row(workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", SCRIPT)
    lines, out = on_a_terminal(workspace, worker, "two")
    assert re.search(r"^work .* 100/100\s+2 failed [\d,.]+/s .* slots \d+/2$", lines[-2]), \
        lines[-5:]
    assert re.search(r"^rest .* 60/60\s+0 failed [\d,.]+/s .* slots \d+/2$", lines[-1]), \
        lines[-5:]
    assert out.splitlines() == ["OK 158"]


@pytest.mark.parametrize("how", ["gather", "map"])
def test_without_a_terminal_one_summary_line(workspace: Workspace, start_worker,
                                             how: str) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", SCRIPT)
    out = workspace.run("main.py", how, env={"DISTRIB_WORKERS": worker.address})
    assert out.stdout.splitlines() == [f"SUM {sum(range(8, 48))}"], out.stderr[-3000:]
    summary = [line for line in out.stderr.splitlines() if line.startswith("distrib: work:")]
    assert len(summary) == 1 and "40/40 done, 0 failed, in" in summary[0], out.stderr


@pytest.mark.long
def test_shipping_a_large_workspace_says_so(workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=1)
    (workspace.root / "data.bin").write_bytes(os.urandom(40 << 20))
    workspace.write("main.py", """
        import os
        from distrib import distributed

        @distributed
        def size():
            return os.path.getsize("data.bin")

        if __name__ == "__main__":
            print("SIZE", size().unwrap(timeout=120))
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.stdout.splitlines() == [f"SIZE {40 << 20}"], out.stderr[-3000:]
    assert re.search(r"shipping the workspace: 2 files, 42 MB", out.stderr), out.stderr
    assert re.search(r"the workspace sent \(42 MB in [\d.]+ s\)", out.stderr), out.stderr


def test_lines_written_while_a_bar_is_drawn_go_above_it_and_its_last_state_comes_first(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", SCRIPT)
    lines, out = on_a_terminal(workspace, worker, "logs")
    assert out.splitlines() == [f"SUM {sum(range(60))}"]
    # Each line starts a line of its own, not the end of a bar's.
    assert "distrib: a log line while the bar is drawn" in lines, lines
    warned = [line for line in lines if "UserWarning: a warning while the bar" in line]
    assert len(warned) == 1 and re.match(r"^\S*main\.py:\d+: UserWarning", warned[0]), lines
    # The bar's last state is drawn when gather returns, before what the script writes next.
    assert lines[-1] == "AFTER the results", lines[-5:]
    assert re.search(r"^rest .* 60/60\s+0 failed", lines[-2]), lines[-5:]


def test_a_map_bar_ends_before_as_completed_does(workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", SCRIPT)
    lines, out = on_a_terminal(workspace, worker, "loop")
    assert out.splitlines() == ["OK 60"]
    assert lines[-1] == "AFTER the results", lines[-5:]
    assert re.search(r"^rest .* 60/60\s+0 failed", lines[-2]), lines[-5:]


def test_a_map_bar_ends_before_a_loop_of_unwraps_does(workspace: Workspace,
                                                     start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("main.py", SCRIPT)
    lines, out = on_a_terminal(workspace, worker, "unwrap")
    assert out.splitlines() == [f"SUM {sum(range(60))}"]
    assert lines[-1] == "AFTER the results", lines[-5:]
    assert re.search(r"^rest .* 60/60\s+0 failed", lines[-2]), lines[-5:]

"""The main script sees on workers what it sees locally: its argv and the variables it names."""

from __future__ import annotations

from tests.helpers import Workspace

CLI = """
    import argparse, os
    from distrib import distributed, gather

    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=1)
    ARGS = parser.parse_args()              # at import: runs on every worker too
    KNOB = os.environ.get("APP_KNOB", "unset")

    @distributed
    def look(x):
        return (x * ARGS.scale, KNOB, os.getenv("EXTRA_ONE"), "SECRET_TOKEN" in os.environ)

    if __name__ == "__main__":
        print("LOOK", sorted(set(gather([look(1) for _ in range(6)], timeout=120))))
    """


def test_argv_and_named_variables_reach_the_workers_and_nothing_else(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("cli.py", CLI)
    env = {"DISTRIB_WORKERS": worker.address, "APP_KNOB": "on", "EXTRA_ONE": "1",
           "SECRET_TOKEN": "hunter2", "DISTRIB_FORWARD_ENV": "EXTRA_*"}
    for scale in ("2", "3"):  # two runs, each with its own argv, on one worker
        out = workspace.run("cli.py", "--scale", scale, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        # The secret is set on the Main, but the workspace never names it: not forwarded.
        assert out.stdout.splitlines() == [f"LOOK [({scale}, 'on', '1', False)]"]


FILES = """
    import sys
    from distrib import distributed, gather

    with open(sys.argv[1]) as f:             # at import: on every worker too
        HEADER = f.readline().strip()

    @distributed
    def info(x):
        return HEADER, len(sys.argv)

    if __name__ == "__main__":
        try:
            print("INFO", sorted(set(gather([info(i) for i in range(4)], timeout=120))))
        except FileNotFoundError as exc:
            print("MISSING", exc.filename)
    """


def test_an_import_that_fails_for_one_run_does_not_fail_another(
        workspace: Workspace, start_worker) -> None:
    worker = start_worker(threads=2)
    workspace.write("data.csv", "a,b\n1,2\n")
    workspace.write("local.csv", "c,d\n")  # here, but never shipped:
    workspace.write(".gitignore", "local.csv\n")
    workspace.write("main.py", FILES)
    env = {"DISTRIB_WORKERS": worker.address}
    many = [f"extra-{i:05d}.txt" for i in range(8000)]  # an argv of 120 KB travels too
    good = workspace.run("main.py", "data.csv", *many, env=env)
    assert good.stdout.splitlines() == ["INFO [('a,b', 8002)]"], good.stderr[-2000:]
    bad = workspace.run("main.py", "local.csv", env=env)  # the import fails on the worker
    assert bad.stdout.splitlines() == ["MISSING local.csv"], bad.stderr[-2000:]
    again = workspace.run("main.py", "data.csv", env=env)  # same environment, other argv
    assert again.stdout.splitlines() == ["INFO [('a,b', 2)]"], again.stderr[-2000:]

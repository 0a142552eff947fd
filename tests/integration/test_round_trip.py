"""The Main measures each link's round trip (``Ping``/``Pong``), which sizes how many tasks a
worker is sent ahead: through a proxy delaying every byte, the measure is at least the delay."""

from __future__ import annotations

import ast
import shutil

from tests.helpers import TASKS, Workspace
from tests.integration.test_faults import DelayProxy


def test_the_round_trip_of_a_slow_link_is_measured(workspace: Workspace,
                                                   start_worker) -> None:
    worker = start_worker(threads=2)
    host, port = worker.address.removeprefix("tcp://").rsplit(":", 1)
    proxy = DelayProxy((host, int(port)), 0.05)  # (each way)
    try:
        shutil.copy(TASKS, workspace.root / "tasks.py")
        workspace.write("main.py", """
            import time
            import distrib
            import tasks
            from distrib.main import _current

            if __name__ == "__main__":
                print("RESULTS", distrib.gather([tasks.sleeper(0.01) for _ in range(20)]))
                views = _current._session.scheduler.workers.values()
                deadline = time.monotonic() + 30
                while not any(v.round_trip for v in views) and time.monotonic() < deadline:
                    time.sleep(0.05)
                print("ROUND_TRIP", [v.round_trip for v in views])
                print("PONGS", _current._session.received["Pong"])
            """)
        out = workspace.run("main.py", env={"DISTRIB_WORKERS": proxy.address})
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == f"RESULTS {[0.01] * 20}"
        round_trip, = ast.literal_eval(lines[1].removeprefix("ROUND_TRIP "))
        assert 0.1 <= round_trip < 10, lines  # (never less than the proxy's delay, both ways)
        assert int(lines[2].split()[1]) >= 1
    finally:
        proxy.close()

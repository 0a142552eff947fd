"""The live dashboard, as a user sees it: a real headless Chromium reads the page a Main
serves while 200 calls run on two real workers, one of which is killed mid-run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import PYTHON, REPO, Workspace, ended, finish, wait_for

ARTIFACTS = Path(os.environ.get("DISTRIB_TEST_ARTIFACTS", REPO / "test-artifacts"))

SCRIPT = """
    import os, sys, time
    import distrib
    from distrib import distributed

    GATE = sys.argv[1]  # (the Main's argv reaches its workers too)

    @distributed
    def work(i):
        time.sleep(0.1)
        deadline = time.monotonic() + 120
        while i >= 100 and not os.path.exists(GATE):  # the second half waits for the test
            if time.monotonic() > deadline:
                raise TimeoutError("the test never opened the gate")
            time.sleep(0.02)
        return i * i

    @distributed(retries=0)
    def check(i):
        raise ValueError(f"sample {i} is out of range")

    if __name__ == "__main__":
        bad = check.map(range(3))
        calls = work.map(range(200))
        print("SUM", sum(distrib.gather(calls)), flush=True)
        print("FAILED", sum(r.exception() is not None for r in bad), flush=True)
        sys.stdin.read()  # the dashboard stays up until the test closes stdin
    """


def _chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing (root); else skip, saying why."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no chromium, and apt-get (as root) is not here to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        except subprocess.TimeoutExpired:
            pytest.skip(f"{' '.join(cmd)} took more than 15 minutes")
        if done.returncode != 0:
            pytest.skip(f"cannot install chromium: {' '.join(cmd)}: {done.stderr[-500:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium, but it is not on the PATH")
    return found


def _start_chromium(binary: str, profile: Path) -> tuple[subprocess.Popen[str], str]:
    """Headless Chromium in a process group of its own; its DevTools websocket URL."""
    proc = subprocess.Popen(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--window-size=1280,1400", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # it prints the endpoint once it listens
        if found := re.search(r"DevTools listening on (ws://\S+)", line):
            return proc, found.group(1)
    _kill_group(proc)
    raise AssertionError("chromium exited without opening its DevTools endpoint")


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Chromium and the processes it started (its zygote, renderers), by its PID's group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)
    if proc.stderr is not None:
        proc.stderr.close()


def _snapshot(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "api/snapshot", timeout=10) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


@pytest.mark.long
@pytest.mark.timeout(1200)  # (installing chromium, when missing, takes minutes)
def test_the_page_follows_a_run_as_a_worker_is_lost_and_matches_the_json(
        workspace: Workspace, start_worker, tmp_path: Path) -> None:
    pytest.importorskip("playwright", reason="the test extra installs playwright")
    from playwright.sync_api import sync_playwright

    binary = _chromium()
    # (its tasks wait for a gate file of the test's: no sandbox, which would hide it)
    first, second = (start_worker(threads=2, extra=("--no-sandbox",)),
                     start_worker(threads=2, extra=("--no-sandbox",)))
    workspace.write("main.py", SCRIPT)
    err_file, gate = tmp_path / "main.err", tmp_path / "gate"
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": f"{first.address},{second.address}",
           "DISTRIB_DASHBOARD": "127.0.0.1:0"}
    with open(err_file, "w") as err, ended(subprocess.Popen(
            [PYTHON, "main.py", str(gate)], cwd=workspace.root, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=err, text=True)) as main:
        url = wait_for(lambda: (m := re.search(r"dashboard: (http://\S+)", err_file.read_text()))
                       and m.group(1), what="the dashboard's URL on the Main's stderr")
        browser_proc, endpoint = _start_chromium(binary, tmp_path / "chromium-profile")
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.connect_over_cdp(endpoint)
                page = browser.contexts[0].new_page()
                page.goto(url)
                rows = "#workers tbody tr"
                page.wait_for_function(
                    f"document.querySelectorAll('{rows}[data-state=ready]').length === 2",
                    timeout=60_000)
                page.wait_for_function(
                    "Number(document.getElementById('done-count').textContent) >= 30",
                    timeout=120_000)
                os.kill(second.pid, signal.SIGKILL)  # mid-run: its tasks go to the other
                second.proc.wait(30)
                page.wait_for_function(
                    f"document.querySelectorAll('{rows}[data-state=lost]').length === 1 && "
                    f"document.querySelectorAll('{rows}[data-state=ready]').length === 1",
                    timeout=60_000)
                assert int(page.text_content("#done-count")) <= 100  # (half wait for the gate)
                gate.touch()
                lost = page.text_content(f"{rows}[data-state=lost]")
                assert second.address in lost and "closed the connection" in lost, lost
                page.wait_for_function(
                    "document.getElementById('done-count').textContent === '200'",
                    timeout=120_000)
                snap = _snapshot(url)
                assert snap["totals"]["done"] == 200 == int(page.text_content("#done-count"))
                assert snap["totals"]["failed"] == 3
                check, work = sorted(snap["functions"], key=lambda f: f["name"])
                assert (work["name"], work["done"], work["pending"]) == ("work", 200, 0)
                assert (check["name"], check["done"], check["failed"]) == ("check", 0, 3)
                failures = page.locator("#failures tbody tr")
                assert failures.count() == 3
                assert "ValueError" in failures.first.text_content()
                assert {f["message"] for f in snap["failures"]} == {
                    f"sample {i} is out of range" for i in range(3)}
                assert work["mean"] >= 0.1 and work["p95"] >= 0.1  # (each sleeps 0.1 s)
                assert "200" in [c.text_content() for c in page.locator("#functions td.done").all()]
                states = {w["address"]: w["state"] for w in snap["workers"]}
                assert states == {first.address: "ready", second.address: "lost"}
                assert snap["workspace"]["files"] >= 1 and snap["workspace"]["workers"]
                page.wait_for_function("document.querySelector('#chart canvas') !== null")
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
                browser.close()
        finally:
            _kill_group(browser_proc)
        out, _ = finish(main)  # (closes its stdin: the script ends)
    assert f"SUM {sum(i * i for i in range(200))}" in out and "FAILED 3" in out


class _Published:
    """What the server reads of a session: its latest snapshot."""

    snapshot: dict[str, Any] | None = None


def _get(url: str, host: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_taken_port_falls_back_to_a_free_one_and_other_sites_cannot_read_it(caplog) -> None:
    from distrib.dashboard import Dashboard

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    published = _Published()
    dashboard = Dashboard(published, f"127.0.0.1:{port}")
    try:
        assert f"port {port} is taken" in caplog.text and dashboard.url in caplog.text
        assert not dashboard.url.endswith(f":{port}/")
        assert _get(dashboard.url + "api/snapshot") == (200, b'{"starting":true}')
        published.snapshot = {"totals": {"done": 7}}
        assert json.loads(_get(dashboard.url + "api/snapshot")[1]) == {"totals": {"done": 7}}
        status, page = _get(dashboard.url)
        assert status == 200 and b"/static/uPlot.iife.min.js" in page
        # A page of another site that rebinds its name to 127.0.0.1 sends its own Host.
        assert _get(dashboard.url + "api/snapshot", host="evil.example")[0] == 400
    finally:
        dashboard.stop()
        taken.close()


def test_everything_the_page_loads_is_packaged_with_distrib() -> None:
    from distrib.dashboard._server import STATIC

    page = (STATIC / "index.html").read_text()
    loaded = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert loaded and all(u.startswith("/static/") for u in loaded), loaded
    for url in loaded:
        assert (STATIC / url.removeprefix("/static/")).is_file(), url
    assert "http" not in (STATIC / "dashboard.js").read_text()  # (no CDN: it works offline)


QUEUE_SCRIPT = """
    import os, sys, time
    import distrib
    from distrib import distributed

    GATE = sys.argv[1]

    @distributed
    def wait_gate(i):
        deadline = time.monotonic() + 120
        while not os.path.exists(GATE) and time.monotonic() < deadline:
            time.sleep(0.02)
        return i

    if __name__ == "__main__":
        print("SUM", sum(distrib.gather(wait_gate.map(range(6)))), flush=True)
        sys.stdin.read()
    """


def test_the_page_names_what_each_count_counts(workspace: Workspace, start_worker,
                                               tmp_path: Path) -> None:
    # One slot, six calls: more calls are at the worker (running or queued there) than
    # slots are busy, and the page says which is which.
    worker = start_worker(threads=1, extra=("--no-sandbox",))
    workspace.write("main.py", QUEUE_SCRIPT)
    err_file, gate = tmp_path / "main.err", tmp_path / "gate"
    env = {**os.environ, "DISTRIB_CACHE_DIR": str(workspace.cache_dir),
           "DISTRIB_WORKERS": worker.address, "DISTRIB_DASHBOARD": "127.0.0.1:0"}
    with open(err_file, "w") as err, ended(subprocess.Popen(
            [PYTHON, "main.py", str(gate)], cwd=workspace.root, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=err, text=True)) as main:
        url = wait_for(lambda: (m := re.search(r"dashboard: (http://\S+)", err_file.read_text()))
                       and m.group(1), what="the dashboard's URL on the Main's stderr")
        snap = wait_for(lambda: (s := _snapshot(url)).get("workers") and
                        s["totals"]["at_workers"] > 1 and sum(w["busy"] for w in s["workers"])
                        == 1 and s, what="calls queued at the worker behind its one busy slot")
        assert "running" not in snap["totals"]  # (its name said less than it counted)
        (work,) = snap["functions"]
        assert work["at_workers"] == snap["totals"]["at_workers"]
        assert work["at_workers"] + work["pending"] == 6
        status, page = _get(url)
        assert status == 200
        cards = {re.sub(r"<[^>]+>", "", label) for label in re.findall(
            r'<span class="label">(.*?)</span><span', page.decode())}
        assert "at workers (running or queued there)" in cards, cards
        assert "slots busy (of offered)" in cards and "pending (not sent yet)" in cards, cards
        assert "running" not in cards
        gate.touch()
        out, _ = finish(main)
    assert "SUM 15" in out

"""Python environments: a worker with only Python and distrib runs the Main's packages.

Everything is offline: the packages are tiny wheels made here (``tinylib``), served to
workers with ``--find-links DIR --no-index``; each Main runs in a virtualenv of its own that
has its version of them (and sees the test environment's distrib behind them).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import (
    PYTHON,
    REPO,
    Worker,
    Workspace,
    ended,
    layered_venv,
    make_wheel,
    raw_main,
    wait_for,
)

PROBE = """\
import json, sys
import tinylib
from distrib import distributed, gather

@distributed
def probe(i):
    import tinylib
    return {"version": tinylib.VERSION, "prefix": sys.prefix,
            "python": "%d.%d" % sys.version_info[:2]}

if __name__ == "__main__":
    calls = [probe(i) for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 4)]
    for call in calls:
        print(json.dumps({**call.unwrap(), "worker": call.worker}))
    print("MAIN", tinylib.VERSION)
"""

OTHER_PYTHON = REPO / ".venv" / "other-python" / "bin" / "python"
TEST_WHEELS = REPO / ".venv" / "test-wheels"


# One process runs this module's tests: it builds the Main virtualenvs below once.
pytestmark = pytest.mark.xdist_group("environments")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    for version in ("1.0", "2.0"):
        make_wheel(folder, "tinylib", version, {"tinylib/__init__.py": f"VERSION = {version!r}\n"})
    return folder


@pytest.fixture(scope="module")
def mains(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> dict[str, Path]:
    """Interpreters of Main virtualenvs with tinylib 1.0 and 2.0."""
    root = tmp_path_factory.mktemp("mains")
    return {v: layered_venv(root / f"main-{v}", wheels, (f"tinylib=={v}",))
            for v in ("1.0", "2.0")}


def results(stdout: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def offline(wheels: Path, *more: str) -> tuple[str, ...]:
    return ("--no-index", "--find-links", str(wheels), *more)


def test_each_main_gets_its_versions_built_once_and_reused(
        workspace: Workspace, start_worker: Callable[..., Worker], wheels: Path,
        mains: dict[str, Path]) -> None:
    worker = start_worker(threads=2, extra=offline(wheels))
    lacks = subprocess.run([PYTHON, "-c", "import tinylib"], capture_output=True)
    assert lacks.returncode != 0  # (the worker's own environment)
    workspace.write("main.py", PROBE)
    env = {"DISTRIB_WORKERS": worker.address}
    # Three Mains at once: two describe the same environment (one build), one another.
    procs = [subprocess.Popen([str(mains[v]), "main.py"], cwd=workspace.root, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, **env,
                                   "DISTRIB_CACHE_DIR": str(workspace.cache_dir)})
             for v in ("1.0", "2.0", "1.0")]
    outs = []
    for proc in procs:
        with ended(proc):
            out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        outs.append((out, err))
    for (out, err), version in zip(outs, ("1.0", "2.0", "1.0")):
        got = results(out)
        assert len(got) == 4 and {r["version"] for r in got} == {version}, out
        assert all(Path(r["prefix"]).is_relative_to(worker.cache_dir / "venvs") for r in got)
    assert "building environment: tinylib 2.0" in outs[1][1]
    first = worker.status()
    assert first["envs_built"] == 2 and first["envs_failed"] == 0, first
    # Runs of the same environments later reuse them.
    for version in ("1.0", "2.0"):
        out = workspace.run("main.py", env=env, python=mains[version])
        assert out.returncode == 0, out.stderr[-3000:]
        assert {r["version"] for r in results(out.stdout)} == {version}
        assert "building environment" not in out.stderr
    again = worker.status()
    assert again["envs_built"] == 2
    assert again["envs_reused"] >= first["envs_reused"] + 2


def test_a_main_of_another_python_version_runs_on_this_worker(
        workspace: Workspace, start_worker: Callable[..., Worker]) -> None:
    if not OTHER_PYTHON.exists():
        pytest.skip("no second Python with distrib's dependencies (./run makes one when pyenv "
                    "or the PATH has Python 3.12 or 3.13)")
    other = subprocess.run([str(OTHER_PYTHON), "-c", "import sys; print('%d.%d' % "
                            "sys.version_info[:2])"], capture_output=True, text=True,
                           check=True).stdout.strip()
    ours = "%d.%d" % sys.version_info[:2]
    assert other != ours
    worker = start_worker(extra=("--no-index",))
    assert other in worker.status()["pythons"]
    workspace.write("main.py", """\
        import sys
        from distrib import distributed

        @distributed
        def version(i):
            return "%d.%d" % sys.version_info[:2], i * i

        if __name__ == "__main__":
            print(sorted(version(i).unwrap() for i in range(4)))
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address},
                        python=OTHER_PYTHON)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == str(sorted((other, i * i) for i in range(4)))
    assert worker.status()["envs_built"] == 1


def test_install_never_refuses_in_the_handshake_and_other_mains_still_run(
        workspace: Workspace, start_worker: Callable[..., Worker], mains: dict[str, Path]
        ) -> None:
    worker = start_worker(extra=("--install", "never"))
    workspace.write("main.py", PROBE)
    env = {"DISTRIB_WORKERS": worker.address}
    refused = workspace.run("main.py", env=env, python=mains["1.0"], timeout=90)
    assert refused.returncode != 0
    assert "DependencyError" in refused.stderr
    assert "tinylib==1.0" in refused.stderr and "--install never" in refused.stderr
    # A Main that needs nothing installed runs on the same worker.
    workspace.write("plain.py", """\
        from distrib import distributed

        @distributed
        def square(x):
            return x * x

        if __name__ == "__main__":
            print(sum(square(i).unwrap() for i in range(10)))
        """)
    plain = workspace.run("plain.py", env=env)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert plain.stdout.strip() == str(sum(i * i for i in range(10)))
    assert worker.status()["envs_built"] == 0


def test_a_package_no_index_has_fails_as_a_dependency_error_naming_it(
        workspace: Workspace, start_worker: Callable[..., Worker], wheels: Path,
        tmp_path: Path) -> None:
    elsewhere = tmp_path / "only-here"
    make_wheel(elsewhere, "tinylib", "3.0", {"tinylib/__init__.py": "VERSION = '3.0'\n"})
    python = layered_venv(tmp_path / "main-3.0", elsewhere, ("tinylib==3.0",))
    worker = start_worker(extra=offline(wheels))
    workspace.write("main.py", PROBE)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, python=python,
                        timeout=90)
    assert out.returncode != 0
    assert "DependencyError" in out.stderr
    assert "tinylib==3.0" in out.stderr and "could not build the environment" in out.stderr
    assert worker.status()["envs_failed"] == 1
    assert worker.proc.poll() is None


@pytest.mark.parametrize("index", ["silent", "refused"])
def test_an_index_out_of_reach_fails_within_seconds_saying_so(
        workspace: Workspace, start_worker: Callable[..., Worker], wheels: Path,
        tmp_path: Path, index: str) -> None:
    # An index that accepts connections and never answers (uv alone waits its 30 s HTTP
    # timeout, several times), or one where nothing listens.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        if index == "silent":
            server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/simple"
        python = layered_venv(tmp_path / "main-2.0", wheels, ("tinylib==2.0",))
        worker = start_worker(extra=("--index-url", url))
        workspace.write("main.py", PROBE)
        # (the deadline: a worker that waits for the index as uv does takes minutes)
        out = workspace.run("main.py", "1", env={"DISTRIB_WORKERS": worker.address},
                            python=python, timeout=60)
    assert out.returncode != 0
    assert "DependencyError" in out.stderr and "tinylib==2.0" in out.stderr, out.stderr
    assert f"the package index {url} could not be reached" in out.stderr, out.stderr
    assert "--find-links DIR --no-index" in out.stderr and "network" in out.stderr
    assert worker.proc.poll() is None


def test_a_local_editable_package_outside_the_workspace_is_shipped(
        workspace: Workspace, start_worker: Callable[..., Worker], tmp_path: Path,
        wheels: Path) -> None:
    source = tmp_path / "localpkg-src"
    (source / "localpkg").mkdir(parents=True)
    (source / "localpkg" / "__init__.py").write_text(
        "from localpkg.data import VALUE\n")
    (source / "localpkg" / "data.py").write_text("VALUE = 'edited ' + str(6 * 7)\n")
    # A module the Main never imports, which imports a package the Main has (so is pinned).
    (source / "localpkg" / "extra.py").write_text("import tinylib\nVERSION = tinylib.VERSION\n")
    python = layered_venv(tmp_path / "main-editable", wheels, ("tinylib==1.0",))
    site = next((tmp_path / "main-editable").glob("lib/python*/site-packages"))
    info = site / "localpkg-0.1.dist-info"  # what an editable install leaves (PEP 660, 610)
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: localpkg\nVersion: 0.1\n")
    (info / "direct_url.json").write_text(json.dumps(
        {"url": source.as_uri(), "dir_info": {"editable": True}}))
    (info / "RECORD").write_text("")
    (site / "__editable__.localpkg-0.1.pth").write_text(f"{source}\n")
    worker = start_worker(extra=offline(wheels))
    workspace.write("main.py", """\
        import localpkg
        from distrib import distributed

        @distributed
        def value(i):
            import localpkg.extra
            return localpkg.VALUE + " " + localpkg.extra.VERSION, localpkg.__file__

        if __name__ == "__main__":
            for i in range(3):
                print(*value(i).unwrap())
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, python=python)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        value, path = line.rsplit(" ", 1)
        assert value == "edited 42 1.0"
        assert Path(path).is_relative_to(worker.cache_dir / "venvs"), path


def test_a_worker_that_cannot_import_the_package_gets_none_of_the_tasks(
        workspace: Workspace, start_worker: Callable[..., Worker], mains: dict[str, Path]
        ) -> None:
    lacking = start_worker(name="lacking", extra=("--install", "never"))
    having = start_worker(name="having", extra=("--install", "never"), python=mains["1.0"])
    workspace.write("main.py", PROBE)
    env = {"DISTRIB_WORKERS": f"{lacking.address},{having.address}"}
    # Shipping no description, the lacking worker fails to import tinylib; with it, that
    # worker says so in the handshake. Either way every task runs on the other, and a run
    # with the description tells the user why. (A run may end before the lacking worker
    # answers on loaded cores, and then has nothing to say: up to three such runs.)
    told = False
    for dependencies in ("none",) * 5 + ("auto",) * 3:
        if told:
            break
        out = workspace.run("main.py", "8", env={**env, "DISTRIB_DEPENDENCIES": dependencies},
                            python=mains["1.0"])
        assert out.returncode == 0, out.stderr[-3000:]
        got = results(out.stdout)
        assert len(got) == 8 and {r["worker"] for r in got} == {"having"}, out.stdout
        assert {r["version"] for r in got} == {"1.0"}
        told = dependencies == "auto" and (
            "cannot import tinylib" in out.stderr or "gets no tasks" in out.stderr)
    assert told, out.stderr[-3000:]


@pytest.mark.skipif(not TEST_WHEELS.is_dir(), reason="no older cloudpickle wheel (./run "
                    "downloads one into .venv/test-wheels)")
def test_a_users_pin_of_a_package_distrib_also_uses_wins_in_the_executor(
        workspace: Workspace, start_worker: Callable[..., Worker], wheels: Path,
        tmp_path: Path) -> None:
    import cloudpickle

    pinned = next(TEST_WHEELS.glob("cloudpickle-*.whl")).name.split("-")[1]
    assert pinned != cloudpickle.__version__
    python = layered_venv(tmp_path / "main-pin", TEST_WHEELS, (f"cloudpickle=={pinned}",))
    worker = start_worker(extra=offline(wheels, "--find-links", str(TEST_WHEELS)))
    workspace.write("main.py", """\
        import cloudpickle
        from distrib import distributed

        @distributed
        def version(i):
            import cloudpickle
            return cloudpickle.__version__

        if __name__ == "__main__":
            print(cloudpickle.__version__, sorted({version(i).unwrap() for i in range(4)}))
        """)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, python=python)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == f"{pinned} {[pinned]}"


def test_a_garbage_environment_description_is_refused_and_the_worker_serves_on(
        start_worker: Callable[..., Worker]) -> None:
    import msgpack
    import zmq

    from distrib.wire import _codec, _facts
    from distrib.wire import _messages as m

    worker = start_worker()
    ctx: zmq.Context = zmq.Context()
    socks = []
    try:
        for garbage in (b"\xc1\xff", msgpack.packb([1, "3.11", [["../x", "1"]], [], None]),
                        msgpack.packb([1, "3.11", [], [["w", "1", "0" * 64, -5]], None])):
            sock = ctx.socket(zmq.DEALER)
            socks.append(sock)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(worker.address)
            sock.send_multipart(_codec.encode(m.Hello(
                m.PROTOCOL_VERSION, "evil", "evil", _facts.python_version(), 1, False, [], {},
                garbage, 1 << 20, [], 0)))
            assert sock.poll(30_000), "no answer from the worker"
            answer = _codec.decode(sock.recv_multipart())
            assert isinstance(answer, m.Refused), answer
            assert "environment description" in answer.reason
    finally:
        for sock in socks:
            sock.close(0)
        ctx.term()
    with raw_main(worker, "honest"):
        assert worker.status()["mains"] == ["honest"]


def test_a_main_sending_a_bad_wheel_fails_its_own_tasks_only(
        workspace: Workspace, start_worker: Callable[..., Worker], wheels: Path,
        mains: dict[str, Path]) -> None:
    import zlib

    import zmq

    from distrib.wire import _codec, _facts
    from distrib.wire import _messages as m
    from distrib.wire._envspec import EnvSpec, Wheel

    worker = start_worker(extra=offline(wheels))
    spec = EnvSpec(_facts.python_version(), wheels=(Wheel("evil", "1.0", "ab" * 32, 10),))
    ctx: zmq.Context = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(worker.address)
        sock.send_multipart(_codec.encode(m.Hello(
            m.PROTOCOL_VERSION, "evil", "evil", _facts.python_version(), 1, False, [], {},
            spec.encode(), 1 << 20, [], 0)))
        sock.send_multipart(_codec.encode(m.Submit([m.TaskSpec(1, "d" * 64, 1, None, 0,
                                                               [b"x"], 0)])))
        seen: list[m.Message] = []

        def answered(kind: type) -> m.Message | None:
            while sock.poll(100):
                seen.append(_codec.decode(sock.recv_multipart()))
            return next((x for x in seen if isinstance(x, kind)), None)

        need = wait_for(lambda: answered(m.NeedBlobs), what="the worker asking for the wheel")
        assert need.dist == spec.env_id and need.hashes == ["ab" * 32]
        sock.send_multipart(_codec.encode(m.Blobs(need.dist, need.hashes,
                                                  frames=(zlib.compress(b"not a wheel"),))))
        reported = wait_for(lambda: answered(m.Results), what="the task's outcome")
        outcome = reported.results[0]
        assert outcome.status is m.Outcome.ENV_ERROR
        assert outcome.info["type"] == "distrib.DependencyError"
        assert "a wheel this Main sent is bad" in outcome.info["message"]
    finally:
        sock.close(0)
        ctx.term()
    # The worker serves an honest Main as before.
    workspace.write("main.py", PROBE)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, python=mains["1.0"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert {r["version"] for r in results(out.stdout)} == {"1.0"}


def test_environments_over_the_owners_limit_are_evicted_least_recently_used_first(
        workspace: Workspace, start_worker: Callable[..., Worker], wheels: Path,
        mains: dict[str, Path]) -> None:
    worker = start_worker(extra=offline(wheels, "--max-envs", "1K", "--idle-executors", "0"))
    workspace.write("main.py", PROBE)
    env = {"DISTRIB_WORKERS": worker.address}
    built: list[set[str]] = []
    for version in ("1.0", "2.0", "1.0"):
        out = workspace.run("main.py", env=env, python=mains[version])
        assert out.returncode == 0, out.stderr[-3000:]
        assert {r["version"] for r in results(out.stdout)} == {version}
        built.append({Path(r["prefix"]).name for r in results(out.stdout)})
        # (an environment that executors still use is never evicted: let them stop)
        wait_for(lambda: worker.status()["executors"] == [], what="idle executors stopped")
    venvs = worker.cache_dir / "venvs"
    kept = {p.name for p in venvs.iterdir() if (p / ".complete").exists()}
    assert kept == built[2]  # the limit keeps only the newest; 2.0's went when 1.0 came back
    assert built[0] == built[2] and built[0] != built[1]
    assert worker.status()["envs_built"] == 3  # 1.0 was evicted by 2.0's build, so built again
    assert not (venvs / ".uv-cache").exists()  # uv's cache counts too, and goes first


def test_a_requirements_file_is_installed_instead_of_what_the_main_has(
        workspace: Workspace, start_worker: Callable[..., Worker], wheels: Path,
        mains: dict[str, Path]) -> None:
    worker = start_worker(extra=offline(wheels))
    workspace.write("main.py", PROBE)
    workspace.write("requirements.txt", "tinylib==2.0\n")
    workspace.write("distrib.toml", '[main]\nrequirements = "requirements.txt"\n')
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address}, python=mains["1.0"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert {r["version"] for r in results(out.stdout)} == {"2.0"}
    assert out.stdout.splitlines()[-1] == "MAIN 1.0"
    assert "the packages of requirements.txt" in out.stderr

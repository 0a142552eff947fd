"""Settings from files, the environment and init() arguments; errors name the setting."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from distrib import ConfigError
from distrib._config import Overrides, WorkerAddress, load
from distrib._values import endpoint
from distrib.wire import _keys

KEY = _keys.generate().public


@pytest.fixture(autouse=True)
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test in an empty folder so no real configuration file is found."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_defaults_mean_the_local_cluster() -> None:
    settings = load({})
    assert settings.workers == () and settings.local_threads >= 1 and settings.forward_output
    assert settings.key is None and settings.source == "defaults"


def test_environment_variables(tmp_path: Path) -> None:
    settings = load({"DISTRIB_WORKERS": f"10.0.0.1:7070, ipc:///tmp/w.sock, h:1 {KEY}",
                     "DISTRIB_LOCAL_THREADS": "3", "DISTRIB_OUTPUT": "off",
                     "DISTRIB_WORKSPACE": str(tmp_path), "DISTRIB_EXCLUDE": "*.csv, data/",
                     "DISTRIB_KEY": str(make_key(tmp_path / "main.key"))})
    assert settings.workers == (WorkerAddress("10.0.0.1:7070"),
                                WorkerAddress("ipc:///tmp/w.sock"), WorkerAddress("h:1", KEY))
    assert settings.local_threads == 3 and not settings.forward_output
    assert settings.workspace == tmp_path and settings.excludes == ("*.csv", "data/")
    assert settings.key is not None


def make_key(path: Path) -> Path:
    _keys.write(path, _keys.generate())
    return path


def test_init_arguments_win_over_the_environment(tmp_path: Path) -> None:
    settings = load({"DISTRIB_LOCAL_THREADS": "3"}, Overrides(
        workers=[("h:1", KEY)], local_threads=5, key=make_key(tmp_path / "k")))
    assert settings.workers == (WorkerAddress("h:1", KEY),) and settings.local_threads == 5


@pytest.mark.parametrize("env,name", [
    ({"DISTRIB_LOCAL_THREADS": "zero"}, "DISTRIB_LOCAL_THREADS"),
    ({"DISTRIB_LOCAL_THREADS": "0"}, "DISTRIB_LOCAL_THREADS"),
    ({"DISTRIB_OUTPUT": "maybe"}, "DISTRIB_OUTPUT"),
    ({"DISTRIB_WORKERS": "nohostport"}, "DISTRIB_WORKERS"),
    ({"DISTRIB_WORKERS": "h:1 notakey"}, "DISTRIB_WORKERS"),
    ({"DISTRIB_WORKSPACE": "/no/such/folder"}, "workspace"),
    ({"DISTRIB_LOST_AFTER": "-1"}, "DISTRIB_LOST_AFTER"),
    ({"DISTRIB_CONFIG": "/no/such.toml"}, "DISTRIB_CONFIG"),
    ({"DISTRIB_KEY": "/no/such.key"}, "distrib keygen"),
    ({"DISTRIB_DEPENDENCIES": "some"}, "DISTRIB_DEPENDENCIES"),
    ({"DISTRIB_MAX_PAYLOAD": "lots"}, "DISTRIB_MAX_PAYLOAD"),
    ({"DISTRIB_MAX_PAYLOAD": "0"}, "DISTRIB_MAX_PAYLOAD"),
    ({"DISTRIB_REQUIREMENTS": "/no/requirements.txt"}, "DISTRIB_REQUIREMENTS.*no such file"),
    ({"DISTRIB_REQUIREMENTS": "main.py"}, "DISTRIB_REQUIREMENTS.*requirements .txt"),
    ({"DISTRIB_DASHBOARD": "maybe"}, "DISTRIB_DASHBOARD.*a port"),
    ({"DISTRIB_DASHBOARD": "99999"}, "DISTRIB_DASHBOARD"),
    ({"DISTRIB_DASHBOARD": "localhost:"}, "DISTRIB_DASHBOARD"),
    ({"DISTRIB_REDISTRIBUTION": "sideways"}, "DISTRIB_REDISTRIBUTION.*relayed"),
])
def test_invalid_settings_name_the_setting(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load(env)


def test_the_documented_file_shape(elsewhere: Path) -> None:
    make_key(elsewhere / "main.key")
    (elsewhere / "data").mkdir()
    (elsewhere / "data" / "requirements.txt").write_text("tinylib==1.0\n")
    (elsewhere / "distrib.toml").write_text(textwrap.dedent(f"""
        [main]
        key = "main.key"
        workspace = "data"
        exclude = ["*.bin"]
        forward_output = false
        lost_after = 4.5
        dependencies = "none"
        requirements = "data/requirements.txt"
        dashboard = 9000
        redistribution = "relayed"
        [local]
        threads = 3
        [discovery]
        enabled = true
        trust = ["{KEY}"]
        [[workers]]
        address = "192.0.2.7:7070"
        public_key = "{KEY}"
        """))
    s = load({})
    assert s.source.endswith("distrib.toml")
    assert s.key is not None and s.workspace == elsewhere / "data"
    assert s.excludes == ("*.bin",) and not s.forward_output and s.lost_after == 4.5
    assert s.dependencies == "none" and s.dashboard == "127.0.0.1:9000"
    assert s.requirements == elsewhere / "data" / "requirements.txt"
    assert s.redistribution == "relayed"
    assert load({"DISTRIB_REDISTRIBUTION": "direct"}).redistribution == "direct"
    assert load({}, Overrides(redistribution="auto")).redistribution == "auto"
    assert s.local_threads == 3 and s.discovery.enabled and s.discovery.trust == (KEY,)
    assert s.workers == (WorkerAddress("192.0.2.7:7070", KEY),)
    assert load({"DISTRIB_LOCAL_THREADS": "7"}).local_threads == 7  # environment wins


@pytest.mark.parametrize(("given", "where"), [
    (True, "127.0.0.1:8787"), (False, None), (1, "127.0.0.1:8787"), (0, None),
    (":0", "127.0.0.1:0"), (8000, "127.0.0.1:8000"),
    ("0.0.0.0:8000", "0.0.0.0:8000"), ("[::1]:8000", "::1:8000"), ("on", "127.0.0.1:8787"),
])
def test_the_dashboard_is_off_unless_asked_and_on_loopback_by_default(given, where) -> None:
    assert load({}).dashboard is None
    assert load({}, Overrides(dashboard=given)).dashboard == where
    assert load({"DISTRIB_DASHBOARD": str(given).lower()}).dashboard == where
    assert load({"DISTRIB_DASHBOARD": "8787"}, Overrides(dashboard=False)).dashboard is None


def test_pyproject_tool_table(elsewhere: Path) -> None:
    (elsewhere / "pyproject.toml").write_text('[project]\nname="x"\n[tool.distrib.local]\n'
                                              "threads = 2\n")
    s = load({})
    assert s.local_threads == 2 and "[tool.distrib]" in s.source


@pytest.mark.parametrize("text,message", [
    ("[mian]\nkey='x'\n", r"unknown section \[mian\]"),
    ("[main]\nkee='x'\n", r"unknown setting \[main\] kee"),
    ("[local]\nthreads = 'many'\n", r"\[local\] threads"),
    ("[main]\nkey = 'missing.key'\n", "missing.key"),
    ("[[workers]]\naddress = '192.0.2.7:7070'\npublic_key = 'short'\n", "not a public key"),
    # (an id of its own: a generated key in it would differ between test processes)
    pytest.param(f"[[workers]]\naddress = '192.0.2.7:7070'\npublic_key = '{KEY}'\n",
                 "needs its own key", id="a-worker-with-a-public-key"),
    ("[[workers]]\nport = 3\n", "needs 'address'"),
    ("not toml at all [", "not valid TOML"),
])
def test_wrong_files_name_the_file_and_the_setting(elsewhere: Path, text: str,
                                                   message: str) -> None:
    (elsewhere / "distrib.toml").write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load({})
    assert "distrib.toml" in str(info.value)


def test_endpoint() -> None:
    assert endpoint("127.0.0.1:7070") == "tcp://127.0.0.1:7070"
    assert endpoint("ipc:///x") == "ipc:///x"
    with pytest.raises(ConfigError):
        endpoint("host:")


def test_key_files(tmp_path: Path) -> None:
    path = make_key(tmp_path / "k")
    pair = _keys.load_secret(path)
    assert _keys.read_public_file(tmp_path / "k.pub") == pair.public
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        _keys.load_secret(path)
    with pytest.raises(ConfigError, match="exists"):
        make_key(path)
    auth = tmp_path / "authorized"
    hash_key = "#" + pair.public[1:]
    auth.write_text(f"# Mains allowed here\n{pair.public} alice@host\n\n{hash_key}\n")
    assert _keys.read_authorized(auth) == {pair.public: "alice@host", hash_key: ""}
    auth.write_text("garbage line\n")
    with pytest.raises(ConfigError, match="line 1"):
        _keys.read_authorized(auth)


def test_a_public_key_file_given_as_the_secret_says_so(tmp_path: Path) -> None:
    make_key(tmp_path / "k")
    with pytest.raises(ConfigError, match="public one: name the file without .pub"):
        _keys.load_secret(tmp_path / "k.pub")


def pasted_pub_line(tmp_path: Path) -> tuple[str, str]:
    """A worker's key and the line of the .pub file `distrib keygen` wrote for it."""
    pair = _keys.generate()
    _keys.write(tmp_path / "worker.key", pair, comment="alice@worker-host")
    line = (tmp_path / "worker.key.pub").read_text().strip()
    assert line == f"{pair.public} alice@worker-host"
    return pair.public, line


def test_a_pub_line_with_its_comment_is_accepted_everywhere(tmp_path: Path,
                                                            elsewhere: Path) -> None:
    key, line = pasted_pub_line(tmp_path)
    main_key = str(make_key(tmp_path / "main.key"))
    expected = (WorkerAddress("192.0.2.7:7070", key),)
    assert load({"DISTRIB_WORKERS": f"192.0.2.7:7070 {line}",
                 "DISTRIB_KEY": main_key}).workers == expected
    assert load({"DISTRIB_WORKERS": f" 192.0.2.7:7070\t{line} , 192.0.2.8:7070 ",
                 "DISTRIB_KEY": main_key}).workers == (*expected, WorkerAddress("192.0.2.8:7070"))
    assert load({}, Overrides(workers=[("192.0.2.7:7070", line)],
                              key=main_key)).workers == expected
    assert load({}, Overrides(workers=[f"192.0.2.7:7070 {line}"],
                              key=main_key)).workers == expected
    (elsewhere / "distrib.toml").write_text(textwrap.dedent(f"""
        [main]
        key = "{main_key}"
        [[workers]]
        address = "192.0.2.7:7070"
        public_key = "{line}"
        """))
    assert load({}).workers == expected


def test_a_key_cut_short_by_the_shell_gets_a_one_line_error_with_a_hint(
        tmp_path: Path, elsewhere: Path) -> None:
    key, line = pasted_pub_line(tmp_path)
    cut = key[:23] + line[40:]  # as from "...$abc..." between double quotes: $abc expanded
    with pytest.raises(ConfigError) as info:
        load({"DISTRIB_WORKERS": f"192.0.2.7:7070 {cut}"})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"DISTRIB_WORKERS: 192.0.2.7:7070: {key[:23]!r} is not a public key")
    assert "single quotes" in message
    with pytest.raises(ConfigError, match="single quotes"):
        load({}, Overrides(workers=[("192.0.2.7:7070", cut)]))
    wrong = "_" + key[1:]  # full length, but not Z85: no shell hint
    with pytest.raises(ConfigError, match="is not a public key") as info:
        load({"DISTRIB_WORKERS": f"192.0.2.7:7070 {wrong} alice@host"})
    assert "single quotes" not in str(info.value) and "\n" not in str(info.value)
    (elsewhere / "distrib.toml").write_text(
        f'[[workers]]\naddress = "192.0.2.7:7070"\npublic_key = "{cut}"\n')
    with pytest.raises(ConfigError) as info:
        load({})
    message = str(info.value)
    assert "\n" not in message and "distrib.toml" in message and "192.0.2.7:7070" in message
    assert "single quotes" in message


def test_a_function_s_redistribution_is_checked_and_kept() -> None:
    from distrib import distributed

    with pytest.raises(ConfigError, match=r"distributed\(redistribution=...\)=.sideways"):
        distributed(redistribution="sideways")(len)
    assert distributed(redistribution="direct")(len).options.redistribution == "direct"
    assert distributed(len).options.redistribution is None  # (the Main's setting)


def test_a_main_that_listens_needs_its_key_and_the_workers_keys(elsewhere: Path) -> None:
    make_key(elsewhere / "main.key")
    (elsewhere / "workers.authorized").write_text(f"{KEY} the lab desktop\n")
    (elsewhere / "distrib.toml").write_text(textwrap.dedent("""
        [main]
        key = "main.key"
        listen = "0.0.0.0:7788"
        authorized_workers = "workers.authorized"
        """))
    s = load({})
    assert s.listen == "0.0.0.0:7788" and s.workers == ()
    assert s.authorized_workers == elsewhere / "workers.authorized"
    assert load({"DISTRIB_LISTEN": "10.0.0.1:9000"}).listen == "10.0.0.1:9000"
    assert load({}, Overrides(listen="127.0.0.1:1")).listen == "127.0.0.1:1"
    (elsewhere / "distrib.toml").unlink()
    with pytest.raises(ConfigError, match="DISTRIB_LISTEN.*host:port"):
        load({"DISTRIB_LISTEN": "7788"})
    with pytest.raises(ConfigError, match="needs this Main's key"):
        load({"DISTRIB_LISTEN": "0.0.0.0:7788"})
    key = {"DISTRIB_KEY": str(elsewhere / "main.key"), "DISTRIB_LISTEN": "0.0.0.0:7788"}
    with pytest.raises(ConfigError, match="authorized_workers"):
        load(key)
    (elsewhere / "bad.authorized").write_text("not-a-key\n")
    with pytest.raises(ConfigError, match="bad.authorized line 1"):
        load({**key, "DISTRIB_AUTHORIZED_WORKERS": str(elsewhere / "bad.authorized")})


def test_a_worker_reached_through_the_relay_by_its_key(elsewhere: Path) -> None:
    make_key(elsewhere / "main.key")
    relay = _keys.generate()
    _keys.write(elsewhere / "relay.key", relay)
    (elsewhere / "distrib.toml").write_text(textwrap.dedent(f"""
        [main]
        key = "main.key"
        relay = "203.0.113.9:7790"
        relay_key = "relay.key.pub"

        [[workers]]
        public_key = "{KEY}"
        via = "relay"

        [[workers]]
        address = "relay:{KEY}"
        """))
    s = load({})
    assert s.relay == "203.0.113.9:7790" and s.relay_key == relay.public
    assert s.workers == (WorkerAddress(f"relay:{KEY}", KEY),) * 2
    (elsewhere / "distrib.toml").unlink()
    env = {"DISTRIB_KEY": str(elsewhere / "main.key"), "DISTRIB_RELAY": "relay.example:7790",
           "DISTRIB_RELAY_KEY": relay.public,
           "DISTRIB_WORKERS": f"relay:{KEY} alice@laptop,192.0.2.7:7070 {KEY}"}  # (a .pub line)
    s = load(env)
    assert s.workers[0] == WorkerAddress(f"relay:{KEY}", KEY) and s.relay == "relay.example:7790"
    with pytest.raises(ConfigError, match="reached through a relay: set .main. relay"):
        load({**env, "DISTRIB_RELAY": ""})
    with pytest.raises(ConfigError, match="needs the relay's public key"):
        load({**env, "DISTRIB_RELAY_KEY": ""})
    with pytest.raises(ConfigError, match="DISTRIB_RELAY=.*host:port"):
        load({**env, "DISTRIB_RELAY": "nowhere"})
    with pytest.raises(ConfigError, match="DISTRIB_WORKERS"):
        load({**env, "DISTRIB_WORKERS": "relay:not-a-key"})
    with pytest.raises(ConfigError, match="needs its own key"):
        load({k: v for k, v in env.items() if k != "DISTRIB_KEY"})
    (elsewhere / "distrib.toml").write_text('[[workers]]\naddress = "h:1"\nvia = "relay"\n')
    with pytest.raises(ConfigError, match='via = .relay. with the worker.s public_key and no '
                                          'address'):
        load(env)

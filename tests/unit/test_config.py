"""Settings from the environment and init() arguments; errors name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from distrib import ConfigError
from distrib._config import WorkerAddress, endpoint, load


def test_defaults_mean_the_local_cluster() -> None:
    settings = load({})
    assert settings.workers == () and settings.local_threads >= 1 and settings.forward_output


def test_environment_variables(tmp_path: Path) -> None:
    settings = load({"DISTRIB_WORKERS": "10.0.0.1:7070, ipc:///tmp/w.sock",
                     "DISTRIB_LOCAL_THREADS": "3", "DISTRIB_OUTPUT": "off",
                     "DISTRIB_WORKSPACE": str(tmp_path), "DISTRIB_EXCLUDE": "*.csv, data/"})
    assert settings.workers == (WorkerAddress("10.0.0.1:7070"), WorkerAddress("ipc:///tmp/w.sock"))
    assert settings.local_threads == 3 and not settings.forward_output
    assert settings.workspace == tmp_path and settings.excludes == ("*.csv", "data/")


def test_init_arguments_win_over_the_environment() -> None:
    settings = load({"DISTRIB_LOCAL_THREADS": "3"}, workers=[("h:1", "KEY")], local_threads=5)
    assert settings.workers == (WorkerAddress("h:1", "KEY"),) and settings.local_threads == 5


@pytest.mark.parametrize("env,name", [
    ({"DISTRIB_LOCAL_THREADS": "zero"}, "DISTRIB_LOCAL_THREADS"),
    ({"DISTRIB_LOCAL_THREADS": "0"}, "DISTRIB_LOCAL_THREADS"),
    ({"DISTRIB_OUTPUT": "maybe"}, "DISTRIB_OUTPUT"),
    ({"DISTRIB_WORKERS": "nohostport"}, "DISTRIB_WORKERS"),
    ({"DISTRIB_WORKSPACE": "/no/such/folder"}, "workspace"),
    ({"DISTRIB_LOST_AFTER": "-1"}, "DISTRIB_LOST_AFTER"),
])
def test_invalid_settings_name_the_setting(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load(env)


def test_endpoint() -> None:
    assert endpoint("127.0.0.1:7070") == "tcp://127.0.0.1:7070"
    assert endpoint("ipc:///x") == "ipc:///x"
    with pytest.raises(ConfigError):
        endpoint("host:")

"""The owner's policy: the file, its checks, and lending hours."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from distrib._errors import ConfigError
from distrib.wire import _keys
from distrib.worker._gate import Quota, parse_quota
from distrib.worker._policy import Hours, Policy, read

FLAGS = Policy(threads=4)


def at(day: str, hhmm: str) -> datetime.datetime:
    """A time on a day of the week of 2026-11-30 (a Monday)."""
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    hour, minute = (int(x) for x in hhmm.split(":"))
    return datetime.datetime(2026, 11, 30, hour, minute) + datetime.timedelta(days.index(day))


def test_hours_over_midnight_belong_to_the_day_they_start() -> None:
    hours = Hours.parse("Mon-Fri 19:00-07:00; Sat-Sun")
    assert hours.open(at("Mon", "19:00")) and hours.open(at("Tue", "06:59"))
    assert not hours.open(at("Mon", "07:00")) and not hours.open(at("Mon", "18:59"))
    assert hours.open(at("Sat", "12:00")) and hours.open(at("Sun", "23:59"))
    assert not hours.open(at("Mon", "06:00"))  # Sunday's rule covers the whole of Sunday only
    assert Hours.parse("Fri 22:00-02:00").open(at("Sat", "01:00"))
    assert Hours.parse("Sun 22:00-02:00").open(at("Mon", "01:00"))  # (the week wraps)
    assert Hours.parse("09:00-12:00, 14:00-17:00").open(at("Wed", "15:30"))
    assert not Hours.parse("09:00-12:00, 14:00-17:00").open(at("Wed", "13:00"))
    assert Hours.parse("Sat,Sun").open(at("Sun", "03:00"))


@pytest.mark.parametrize("text, named", [
    ("", "expected rules"), ("Mon-Fry", "'mon-fry' is not a day"),
    ("Mon 7-9", "'7-9' is not a time range"), ("Mon 25:00-26:00", "is not a time of day"),
    ("12:00-12:00", "'12:00-12:00' is empty"),
])
def test_bad_hours_say_what_is_wrong(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Hours.parse(text)


def test_the_file_goes_over_the_flags(tmp_path: Path) -> None:
    path = tmp_path / "worker.toml"
    path.write_text('threads = 2\nmax_task_memory = "300M"\nwhen_idle = "vacate"\n'
                    'idle_load = 0.5\nhours = "Sat-Sun"\n')
    policy = read(path, Policy(threads=8, nice=12))
    assert (policy.threads, policy.nice, policy.max_task_memory) == (2, 12, 300 << 20)
    assert policy.when_idle == "vacate" and policy.idle_load == 0.5
    assert policy.hours is not None and policy.hours.text == "Sat-Sun"
    assert "when_idle vacate" in policy.describe()


def test_a_tasks_disk_limit_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "worker.toml"
    path.write_text('max_task_disk = "2G"\n')
    policy = read(path, Policy(threads=8, max_task_disk=1 << 30))
    assert policy.max_task_disk == 2 << 30
    assert "max_task_disk 2G" in policy.describe()


@pytest.mark.parametrize("text, named", [
    ("thread = 2", "unknown setting 'thread'"),
    ("threads = 0", "threads=0: expected at least 1"),
    ('threads = "4"', "expected a whole number"),
    ('when_idle = "always"', "expected \"finish\""),
    ("idle_load = 2", "idle_load=2.0: expected a share"),
    ('max_memory = "lots"', "max_memory='lots': expected a size"),
    ('max_task_disk = "-1G"', "max_task_disk='-1G': expected a size"),
    ('max_task_memory = "nan"', "max_task_memory='nan': expected a size above 0"),
    ("max_task_memory = inf", "max_task_memory=inf: expected a size above 0"),
    ("threads = ", "is not valid TOML"),
])
def test_a_bad_file_names_the_setting(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=named) as info:
        read(path, FLAGS)
    assert str(path) in str(info.value)


def test_quotas_in_an_authorized_key_line() -> None:
    assert parse_quota("alice laptop slots=2 priority=3", "k") == Quota(2, 3.0)
    assert parse_quota("bob", "k") == Quota()
    assert parse_quota("ci host=build1", "k") == Quota()  # (other words are the name's)
    assert str(Quota(1, 2.0)) == "at most 1 slot(s), priority 2"
    with pytest.raises(ConfigError, match="unknown setting 'slot'"):
        parse_quota("carol slot=2", "k")
    with pytest.raises(ConfigError, match="slots=0"):
        parse_quota("carol slots=0", "k")


def test_the_network_a_keys_tasks_may_reach_in_its_line() -> None:
    assert parse_quota("alice network=loopback", "k") == Quota(network="loopback")
    assert str(Quota(2, network="all")) == "at most 2 slot(s), network all"
    with pytest.raises(ConfigError, match="expected none .*, loopback .* or all"):
        parse_quota("bob network=lan", "k")
    with pytest.raises(ConfigError, match="unknown setting 'net'"):
        parse_quota("bob net=all", "k")


def test_the_policy_file_names_mains_to_dial(tmp_path: Path) -> None:
    key = _keys.generate().public
    path = tmp_path / "worker.toml"
    path.write_text(f'connect = ["main.example:7788 {key}", "tcp://10.0.0.1:9 {key} a Main"]\n')
    policy = read(path, Policy(threads=2))
    assert policy.connect == (("main.example:7788", key), ("10.0.0.1:9", key))
    assert "connect main.example:7788, 10.0.0.1:9" in policy.describe()
    path.write_text('connect = ["main.example 7788"]\n')
    with pytest.raises(ConfigError, match="not HOST:PORT"):
        read(path, Policy(threads=2))
    path.write_text('connect = ["main.example:7788 notakey"]\n')
    with pytest.raises(ConfigError, match="connect main.example:7788: 'notakey' is not a public"):
        read(path, Policy(threads=2))


def test_the_policy_file_names_a_relay(tmp_path: Path) -> None:
    key = _keys.generate().public
    path = tmp_path / "policy.toml"
    path.write_text(f'relay = "relay.example:7790 {key}"\n')
    policy = read(path, Policy(2))
    assert policy.relay == ("relay.example:7790", key)
    assert "relay relay.example:7790" in policy.describe()
    for text, named in (('relay = "relay.example:7790"', "relay: expected"),
                        (f'relay = "nowhere {key}"', "relay='nowhere'"),
                        ('relay = "relay.example:7790 notakey"', "relay key")):
        path.write_text(text + "\n")
        with pytest.raises(ConfigError, match=named):
            read(path, Policy(2))

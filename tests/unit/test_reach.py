"""The pieces of reaching a worker through a relay that need no sockets: the ``relay:KEY``
address form, and where a worker's party finds its own listening socket."""

from __future__ import annotations

import pytest

from distrib import ConfigError
from distrib.wire import _keys, _reach
from distrib.worker._relaying import local

KEY = _keys.generate().public


def test_a_relayed_address_is_the_workers_key() -> None:
    assert _reach.relayed(f"relay:{KEY}", None) == (f"relay:{KEY}", KEY)
    assert _reach.relayed(f"relay:{KEY}", KEY) == (f"relay:{KEY}", KEY)
    assert _reach.relayed("h:1", KEY) == ("h:1", KEY)  # (not relayed: as given)
    with pytest.raises(ConfigError, match="another key"):
        _reach.relayed(f"relay:{KEY}", _keys.generate().public)
    with pytest.raises(ConfigError):
        _reach.relayed("relay:short", None)
    assert _reach.via("w", {"public_key": KEY, "via": "relay"}) == {
        "public_key": KEY, "address": f"relay:{KEY}"}


def test_the_party_reaches_the_workers_socket_on_this_host() -> None:
    assert local("tcp://0.0.0.0:7070") == "tcp://127.0.0.1:7070"
    assert local("tcp://192.168.77.2:7070") == "tcp://192.168.77.2:7070"
    assert local("tcp://[::]:7070") == "tcp://[::1]:7070"
    assert local("ipc:///run/w.sock") == "ipc:///run/w.sock"

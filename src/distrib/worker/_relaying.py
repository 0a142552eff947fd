"""A worker reached through a relay (``--relay HOST:PORT --relay-key KEY``): for a worker behind
NAT whose Mains cannot dial it, nor it them.

The worker keeps a party at the relay (``distrib.wire._relayed``) and exposes its own listening
ROUTER there to the Mains its owner authorizes (the keys of ``--authorized-keys`` and of
``--main-key``, again as that file changes). A Main asks the relay for a splice to this worker's
public key; the party joins it to a new connection to the ROUTER, whose CURVE handshake and key
check are those of any Main that connects: the relay copies bytes it cannot read.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from distrib._errors import ConfigError
from distrib.wire import _reach
from distrib.wire._keys import KeyPair

log = logging.getLogger("distrib.worker")


def options(command: Any) -> Any:
    """The ``--relay`` and ``--relay-key`` options of ``distrib worker``."""
    command = click.option(
        "--relay-key", default=None, metavar="KEY",
        help="The public key (or .pub file) of the --relay, which it must prove.")(command)
    return click.option(
        "--relay", default=None, metavar="HOST:PORT",
        help="Be reached through the relay there (`distrib relay`), by this worker's public "
             "key, by the Mains of --authorized-keys and --main-key: for a worker no Main can "
             "connect to. Needs --relay-key and --key.")(command)


def flags(relay: str | None, relay_key: str | None, key: KeyPair | None) -> tuple[str, str] | None:
    """(the relay's host:port, its public key) as the flags give them, checked."""
    if relay is None and relay_key is None:
        return None
    if relay is None or relay_key is None or key is None:
        raise click.UsageError("--relay needs --relay-key (the relay's public key) and --key "
                               "(this worker's secret key, which the relay and Mains check)")
    try:
        return _reach.relay("--relay", relay), _reach.relay_key("--relay-key", relay_key)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def local(address: str) -> str:
    """Where this host's party reaches the worker's bound ROUTER (``tcp://0.0.0.0:P``: on
    loopback)."""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    if host in ("0.0.0.0", "*", ""):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    return address if address.startswith("ipc://") else f"tcp://{host}:{port}"


class Exposure:
    """This worker's party at the relay, and the Mains' keys it takes splices from."""

    def __init__(self, relay: tuple[str, str], key: KeyPair, address: str,
                 allowed: frozenset[str] | None) -> None:
        from distrib.wire._relayed import RelayParty  # (not for the command line's start)

        self.party = RelayParty(relay[0], relay[1], key)
        self.target = local(address)
        self.allowed = allowed
        self.party.expose(self.target, allowed)
        self.party.start()
        log.info("reached through relay %s as %s (by %s)", relay[0], key.public,
                 "any Main's key" if allowed is None else f"{len(allowed)} Main key(s)")

    def allow(self, keys: frozenset[str] | None) -> None:
        """The Mains' keys changed (the authorized-keys file)."""
        if keys != self.allowed:
            self.allowed = keys
            self.party.expose(self.target, keys)

    def status(self) -> dict[str, Any]:
        return {"relay": self.party.relay, "registered": self.party.registered,
                "refused": self.party.refused or "", "splices": len(self.party.splices)}

    def close(self) -> None:
        self.party.close()

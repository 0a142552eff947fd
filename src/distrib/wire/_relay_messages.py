"""The messages a party and a relay exchange on their control connection, and the first bytes
of a splice connection (see docs/relay.md).

The control connection is a ZeroMQ CURVE link (the relay the server, checking the party's key);
each message is one frame, a msgpack list led by its type tag. A splice connection is plain
TCP: it opens with ``MAGIC`` and a one-time token the relay handed out on a control
connection, and then carries the two parties' own (CURVE) bytes, which the relay only copies.
"""

# (no ``from __future__ import annotations``: msgspec reads the types once, as objects)
from typing import Annotated, Union

import msgspec
from msgspec import Meta, Struct

from distrib._errors import ProtocolError

RELAY_PROTOCOL = 1
MAGIC = b"DRS1"  # a splice connection's first bytes (never 0xFF, a ZeroMQ greeting's first)
TOKEN_BYTES = 16
MAX_CONTROL_BYTES = 4096  # a control frame larger than this drops the connection

Key = Annotated[str, Meta(min_length=40, max_length=40)]
Token = Annotated[bytes, Meta(min_length=TOKEN_BYTES, max_length=TOKEN_BYTES)]
Reason = Annotated[str, Meta(max_length=500)]


class RelayMessage(Struct, frozen=True, array_like=True, forbid_unknown_fields=True,
                   gc=False, tag=True):
    """Base of the control messages."""


class Register(RelayMessage, frozen=True, tag=1):
    """party -> relay, every heartbeat: here I am (by the key CURVE proved); ``accepts``: the
    relay may hand this party incoming splices."""

    version: int
    accepts: bool


class Registered(RelayMessage, frozen=True, tag=2):
    """relay -> party, the answer to each Register: the party is reachable through the relay
    until ``lost_after`` seconds pass without one."""

    version: int
    lost_after: float


class Connect(RelayMessage, frozen=True, tag=3):
    """party -> relay: splice me to the party of key ``peer`` (``request`` names the ask)."""

    request: int
    peer: Key


class Splice(RelayMessage, frozen=True, tag=4):
    """relay -> the party that asked: open a splice connection with ``token``."""

    request: int
    token: Token


class Incoming(RelayMessage, frozen=True, tag=5):
    """relay -> the party asked for: the party of key ``peer`` wants a splice; open a splice
    connection with ``token`` (or do nothing: the relay forgets the token)."""

    token: Token
    peer: Key


class Unreachable(RelayMessage, frozen=True, tag=6):
    """relay -> the party that asked: no splice to ``peer`` now, and why."""

    request: int
    reason: Reason


AnyRelayMessage = Union[Register, Registered, Connect, Splice, Incoming, Unreachable]
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyRelayMessage)


def encode(message: RelayMessage) -> bytes:
    return _encoder.encode(message)


def decode(frame: bytes) -> AnyRelayMessage:
    """The message in ``frame``; ``ProtocolError`` whatever is wrong with it."""
    if len(frame) > MAX_CONTROL_BYTES:
        raise ProtocolError(f"a relay control message of {len(frame)} bytes (at most "
                            f"{MAX_CONTROL_BYTES})")
    try:
        return _decoder.decode(frame)
    except msgspec.MsgspecError as exc:
        raise ProtocolError(f"not a relay control message: {exc}") from None

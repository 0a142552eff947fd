"""The Mains a worker daemon serves: who said Hello, on which connection, when last heard,
and the argv and variables their runs' executors get (a *context*, named by its hash)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack

from distrib.wire import _messages as m

Context = tuple[list[str], dict[str, str]]  # the Main's sys.argv, forwarded variables


@dataclass(eq=False)
class MainPeer:
    """A Main that said Hello."""

    peer: bytes
    main_id: str
    name: str
    forward_output: bool
    last_seen: float
    context: str  # names its argv and forwarded variables in ``Mains.contexts``
    fd: int = -1  # its connection's file descriptor: when that closes, the Main is gone


class Mains(dict[bytes, MainPeer]):
    """The Mains served, by routing id."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: dict[str, Context] = {}

    def welcome(self, peer: bytes, hello: m.Hello, now: float) -> MainPeer:
        context = hashlib.sha256(msgpack.packb([hello.argv, sorted(hello.environ.items())]))
        main = self[peer] = MainPeer(peer, hello.main_id, hello.name, hello.forward_output, now,
                                     context.hexdigest()[:16])
        self.contexts[main.context] = (hello.argv, hello.environ)
        return main

    def on_connection(self, fd: int) -> list[bytes]:
        """The Mains whose connection was ``fd``."""
        return [peer for peer, main in self.items() if main.fd == fd]

    def silent(self, now: float, lost_after: float) -> list[bytes]:
        """The Mains not heard from for ``lost_after`` seconds."""
        return [peer for peer, main in self.items() if now - main.last_seen > lost_after]

    def forget(self, peer: bytes, still_used: set[str]) -> MainPeer | None:
        """Drop a Main, and the contexts that neither a Main nor ``still_used`` needs."""
        main = self.pop(peer, None)
        in_use = {x.context for x in self.values()} | still_used
        for context in set(self.contexts) - in_use:
            del self.contexts[context]
        return main

"""The Mains a worker daemon serves: who said Hello, on which connection, when last heard,
and what their runs' executors get: argv, variables and Python environment (a *context*,
named by its hash)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import msgpack
from msgspec import Struct, field

from distrib.wire import _messages as m



class Context(Struct, frozen=True):
    """What executors of a Main's runs get: its sys.argv, forwarded variables, Python
    environment ("": the daemon's own), and the modules their template imports ahead."""

    argv: list[str]
    environ: dict[str, str]
    env: str
    preload: list[str]
    max_payload: int  # bytes a result may pickle to; 0: no limit
    network: str = ""  # what its sandboxed executors may reach ("": they have no sandbox)
    peer: bytes = b""  # in a sandbox: the Main it holds (the only one: its shared objects)
    shm: bool = False  # in a sandbox: it shares this machine's /dev/shm


class MainPeer(Struct, eq=False):
    """A Main that said Hello."""

    peer: bytes
    main_id: str
    name: str
    forward_output: bool
    last_seen: float
    context: str  # names its argv, forwarded variables and environment in ``Mains.contexts``
    env: str  # its Python environment's id ("": the daemon's own interpreter)
    env_problem: str  # why that environment cannot be had here ("" if it can)
    max_frame: int  # the largest frame it takes
    pid: int = 0  # its process id (as it says)
    shm: bool = False  # it shares this machine's /dev/shm and user: large frames go there
    fd: int = -1  # its connection's file descriptor: when that closes, the Main is gone
    sent_at: float = 0.0  # when this worker last sent it anything (a heartbeat is due after)
    key: str = ""  # its public key (its quota is that key's), with CURVE
    hello: m.Hello | None = None  # as it said it (a delegate of it says it again elsewhere)
    delegates: set[str] = field(default_factory=set)  # keys of its workers, which may send
    # calls here on its behalf (its ``Peers``)
    account: bytes = b""  # a worker's connection sending calls for a Main: that Main's peer


class Mains(dict[bytes, MainPeer]):
    """The Mains served, by routing id."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: dict[str, Context] = {}
        # What a Main's tasks may reach in their sandbox, by its key; None: no sandbox
        self.network: Callable[[str], str] | None = None

    def welcome(self, peer: bytes, hello: m.Hello, now: float, env: str,
                env_problem: str, shm: bool, key: str = "") -> MainPeer:
        network = self.network(key) if self.network is not None else ""
        # (in a sandbox, executors are one Main's: what a task leaves there, none other meets)
        box = [network, peer.hex(), shm] if network else []
        context = hashlib.sha256(msgpack.packb([hello.argv, sorted(hello.environ.items()),
                                                env, hello.preload, hello.max_payload, *box]))
        main = self[peer] = MainPeer(peer, hello.main_id, hello.name, hello.forward_output, now,
                                     context.hexdigest()[:16], env, env_problem,
                                     hello.max_frame, hello.pid, shm, key=key, hello=hello)
        self.contexts[main.context] = Context(hello.argv, hello.environ, env, hello.preload,
                                              hello.max_payload, network,
                                              peer if network else b"", shm and bool(network))
        return main

    def on_connection(self, fd: int) -> list[bytes]:
        """The Mains whose connection was ``fd``."""
        return [peer for peer, main in self.items() if main.fd == fd]

    def excuse(self, seconds: float, now: float) -> None:
        """This daemon read nothing for ``seconds`` (one long turn of its loop): that time
        does not count as any Main's silence (their heartbeats wait unread meanwhile)."""
        for main in self.values():
            main.last_seen = min(now, main.last_seen + seconds)

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

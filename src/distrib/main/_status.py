"""Ask workers for their status, as ``distrib status`` shows it; every failure becomes a reason."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from distrib._config import Settings
from distrib._values import endpoint
from distrib.wire import _codec, _reach, _transport
from distrib.wire import _messages as m
from distrib.wire._keys import KeyPair

_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
             | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)


@dataclass
class WorkerStatus:
    """What one worker said about itself, or why it could not be asked."""

    address: str
    source: str  # "configured" or "discovered"
    info: dict[str, Any] = field(default_factory=dict)
    problem: str = ""

    @property
    def reachable(self) -> bool:
        return not self.problem


def query(address: str, server_key: str | None = None, key: KeyPair | None = None,
          timeout: float = 5.0, source: str = "configured", via: str = "") -> WorkerStatus:
    """Send a StatusRequest and wait up to ``timeout`` for the answer (``via``: the endpoint
    to connect to instead of ``address``'s: a relay party's local end)."""
    result = WorkerStatus(address, source)
    ctx: zmq.Context[Any] = zmq.Context()
    sock = _transport.dealer(ctx, via or endpoint(address), server_key, key)
    monitor = _transport.monitor(sock, _FAILURES)
    try:
        _transport.send(sock, m.StatusRequest())
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            events = dict(poller.poll(int(left * 1000) + 1))
            if monitor in events:
                event = _transport.monitor_event(monitor)["event"]
                result.problem = ("refused this Main's key" if event ==
                                  zmq.EVENT_HANDSHAKE_FAILED_AUTH else
                                  "did not prove its configured public key")
                return result
            if sock in events:
                reply = _codec.decode(sock.recv_multipart())
                if isinstance(reply, m.Status):
                    result.info = reply.info
                    return result
        result.problem = f"no answer within {timeout:.0f} s"
        return result
    except Exception as exc:  # a bad address or reply: report it, don't crash the table
        result.problem = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)
        ctx.term()


DISK_WAIT = 2.0  # seconds ``distrib status`` waits for a worker's first measure of its disk


def query_all(targets: list[tuple[str, str | None, str]], settings: Settings,
              timeout: float) -> list[WorkerStatus]:
    """Each of ``targets`` (address, public key, source) asked (``query_measured``); those
    whose address is ``relay:KEY`` through the Main's relay."""
    party = None
    if settings.relay and settings.relay_key and settings.key and any(
            a.startswith(_reach.RELAYED) for a, _, _ in targets):
        from distrib.wire._relayed import RelayParty

        party = RelayParty(settings.relay, settings.relay_key, settings.key).start()
    try:
        return [query_measured(a, k, settings.key, timeout, source,
                               party.forward(k, "ipc://") if party and k and
                               a.startswith(_reach.RELAYED) else "")
                for a, k, source in targets]
    finally:
        if party is not None:
            party.close()


def query_measured(address: str, server_key: str | None = None, key: KeyPair | None = None,
                   timeout: float = 5.0, source: str = "configured", via: str = ""
                   ) -> WorkerStatus:
    """``query``, asked again for a short while when the worker has not measured its disk
    yet (it measures at its first query, in the background): the table's first look shows
    what the cache holds, not nothing."""
    answer = query(address, server_key, key, timeout, source, via)
    deadline = time.monotonic() + DISK_WAIT
    while answer.reachable and "disk_age_s" in answer.info and \
            answer.info["disk_age_s"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
        answer = query(address, server_key, key, timeout, source, via)
    return answer

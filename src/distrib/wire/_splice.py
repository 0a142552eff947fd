"""Byte splices: two TCP (or Unix) connections joined so that what one reads the other writes.

Both ends of a relayed link use them: the relay joins a party's connection to the far party's,
and each party joins a local ZeroMQ socket's connection to its connection to the relay. The
bytes are opaque here (a CURVE session runs through them end to end). Memory is bounded: when
one side's write buffer passes ``HIGH_WATER`` the other side stops reading until it drains,
so a slow reader slows its writer instead of filling this process. A ``Rate`` may slow what
one side reads to a number of bytes per second (the relay's per-key bandwidth cap).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

HIGH_WATER = 4 << 20  # bytes waiting to be written to one side before the other stops reading
_LOW_WATER = 1 << 20


class Rate:
    """A token bucket of ``per_second`` bytes (a burst of one second's worth), shared by every
    splice of one key."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second, self._clock = per_second, clock
        self._tokens, self._at = per_second, clock()

    def charge(self, size: int) -> float:
        """Take ``size`` bytes; the seconds to wait before reading more (0: none)."""
        now = self._clock()
        self._tokens = min(self.per_second, self._tokens + (now - self._at) * self.per_second)
        self._at = now
        self._tokens -= size
        return 0.0 if self._tokens >= 0 else -self._tokens / self.per_second


class _Side(asyncio.Protocol):
    """One connection of a splice: what it reads is written to the other side."""

    def __init__(self, splice: Splice, transport: asyncio.Transport, rate: Rate | None) -> None:
        self.splice, self.transport, self.rate = splice, transport, rate
        self.other: _Side | None = None
        self.sent = 0  # bytes read here and written to the other side
        self._holds: set[str] = set()  # why reading is paused: "full" (other side), "rate"

    def hold(self, why: str) -> None:
        if not self._holds:
            self.transport.pause_reading()
        self._holds.add(why)

    def release(self, why: str) -> None:
        self._holds.discard(why)
        if not self._holds and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        assert self.other is not None
        self.sent += len(data)
        self.other.transport.write(data)
        if self.rate is not None:
            wait = self.rate.charge(len(data))
            if wait > 0:
                self.hold("rate")
                asyncio.get_running_loop().call_later(wait, self.release, "rate")

    def pause_writing(self) -> None:  # (this side's write buffer is full: the other waits)
        if self.other is not None:
            self.other.hold("full")

    def resume_writing(self) -> None:
        if self.other is not None:
            self.other.release("full")

    def eof_received(self) -> bool:
        return False  # close this side; connection_lost closes the other once it has written

    def connection_lost(self, exc: Exception | None) -> None:
        self.splice.lost()


class Splice:
    """Two connections joined both ways; ``on_close`` is called once, when either closes (the
    other is closed too, after it has written what it holds)."""

    def __init__(self, a: asyncio.Transport, b: asyncio.Transport, *, a_early: bytes = b"",
                 b_early: bytes = b"", a_rate: Rate | None = None, b_rate: Rate | None = None,
                 on_close: Callable[[Splice], Any] | None = None) -> None:
        """Join ``a`` and ``b``, whose reading is paused; ``a_early`` is what was read from ``a``
        before (written to ``b`` first), and the same for ``b``. ``a_rate`` slows what is read
        from ``a``."""
        self.on_close = on_close
        self.closed = False
        self.a = _Side(self, a, a_rate)
        self.b = _Side(self, b, b_rate)
        self.a.other, self.b.other = self.b, self.a
        for side in (self.a, self.b):
            side.transport.set_write_buffer_limits(HIGH_WATER, _LOW_WATER)
            side.transport.set_protocol(side)
        for side, early in ((self.a, a_early), (self.b, b_early)):
            if early:
                side.data_received(early)
        for side in (self.a, self.b):
            if side.transport.is_closing():
                self.lost()
                return
        # Reading starts only now: a side whose early bytes filled the other waits for it.
        for side in (self.a, self.b):
            if not side._holds:
                side.transport.resume_reading()

    def lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.a.transport.close()
        self.b.transport.close()
        if self.on_close is not None:
            self.on_close(self)

    def close(self) -> None:
        """Cut both connections now, dropping what is buffered."""
        self.a.transport.abort()
        self.b.transport.abort()
        self.lost()


class Waiting(asyncio.Protocol):
    """A connection held (not read) until it is joined in a ``Splice``: it only notices that
    it closed meanwhile."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.early = b""  # bytes read before reading was paused
        self.joined = False  # in a Splice now (which closes it)
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()
        keep_alive(transport)

    def data_received(self, data: bytes) -> None:
        self.early += data  # (at most one read: reading was paused at once)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def connect(endpoint: str) -> Waiting:
    """Open a connection to ``tcp://host:port`` or ``ipc:///path``, held for a splice."""
    loop = asyncio.get_running_loop()
    if endpoint.startswith("ipc://"):
        _, protocol = await loop.create_unix_connection(Waiting, endpoint.removeprefix("ipc://"))
    else:
        host, port = split_host_port(endpoint.removeprefix("tcp://"))
        _, protocol = await loop.create_connection(Waiting, host, port)
    return protocol


def keep_alive(transport: asyncio.BaseTransport) -> None:
    """Have the kernel probe an idle TCP connection, so that one whose far end vanished
    without closing it (a host gone, a NAT that forgot it) is closed within about 90 s."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):  # (Linux and recent macOS)
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def split_host_port(address: str) -> tuple[str, int]:
    """``("host", port)`` of ``host:port`` or ``[v6]:port``; ValueError if it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)

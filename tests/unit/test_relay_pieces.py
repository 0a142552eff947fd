"""The relay's pieces with no relay: its control messages, the per-key rate, and a splice's
bounded buffers (two socket pairs in one event loop)."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distrib._errors import ProtocolError
from distrib.wire import _relay_messages as rm
from distrib.wire._splice import HIGH_WATER, Rate, Splice, Waiting

KEY = "x" * 40


@pytest.mark.parametrize("message", [
    rm.Register(rm.RELAY_PROTOCOL, True), rm.Registered(rm.RELAY_PROTOCOL, 5.0),
    rm.Connect(7, KEY), rm.Splice(7, b"t" * rm.TOKEN_BYTES),
    rm.Incoming(b"t" * rm.TOKEN_BYTES, KEY), rm.Unreachable(7, "no party of that key")])
def test_each_control_message_travels_whole(message: rm.RelayMessage) -> None:
    assert rm.decode(rm.encode(message)) == message


@given(st.binary(max_size=200))
def test_any_bytes_decode_to_a_message_or_a_protocol_error(data: bytes) -> None:
    try:
        rm.decode(data)
    except ProtocolError:
        pass


def test_malformed_control_messages_are_protocol_errors() -> None:
    for bad in (rm.encode(rm.Connect(1, "short")), rm.encode(rm.Splice(1, b"t")),
                b"\x92\x63\x01", b"\x00" * (rm.MAX_CONTROL_BYTES + 1)):
        with pytest.raises(ProtocolError):
            rm.decode(bad)


def test_a_rate_lets_a_seconds_worth_through_then_asks_to_wait() -> None:
    now = [0.0]
    rate = Rate(1000.0, clock=lambda: now[0])
    assert rate.charge(1000) == 0.0
    assert rate.charge(500) == pytest.approx(0.5)
    now[0] = 1.5  # (the debt is paid, and a full second's worth is back)
    assert rate.charge(1000) == 0.0
    now[0] = 100.0  # (never more than one second's worth saved up)
    assert rate.charge(2000) == pytest.approx(1.0)


def test_a_splice_stops_reading_while_the_other_side_does_not_drain() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        # writer <-> a ... splice ... b <-> reader (which reads nothing until the end)
        writer, a_sock = socket.socketpair()
        reader, b_sock = socket.socketpair()
        for s in (writer, reader):
            s.setblocking(False)
        a_transport, _ = await loop.connect_accepted_socket(Waiting, a_sock)
        b_transport, _ = await loop.connect_accepted_socket(Waiting, b_sock)
        closed: list[Splice] = []
        splice = Splice(a_transport, b_transport, a_early=b"early", on_close=closed.append)
        sent = 0
        payload = os.urandom(1 << 20)
        for _ in range(60):  # 60 MB offered; the splice may hold only a few of them
            try:
                sent += writer.send(payload)
            except BlockingIOError:
                await asyncio.sleep(0.01)
        assert b_transport.get_write_buffer_size() <= HIGH_WATER + (1 << 20)
        assert sent < 30 << 20  # (the writer was held back)
        received = b""
        while len(received) < 5:
            try:
                received += reader.recv(1 << 16)
            except BlockingIOError:
                await asyncio.sleep(0.01)
        assert received.startswith(b"early")
        writer.close()
        reader.close()
        for _ in range(100):
            if closed:
                break
            await asyncio.sleep(0.01)
        assert closed == [splice]

    asyncio.run(scenario())

"""The executor pipe's framing on a real socketpair: small, large, and broken messages."""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest

from distrib.wire._messages import Outcome
from distrib.wire._pipe import Pipe, Verb


def pair() -> tuple[Pipe, Pipe]:
    a, b = socket.socketpair()
    return Pipe(a), Pipe(b)


def test_small_and_large_messages_round_trip() -> None:
    left, right = pair()
    big = os.urandom(8 << 20)  # larger than the socket buffer: needs the reader meanwhile
    got: list[tuple[list[object], list[bytes]]] = []
    reader = threading.Thread(target=lambda: got.extend(right.recv() for _ in range(3)))
    reader.start()
    left.send(["ready"])
    left.send(["run", 7], [b"head", memoryview(big)])
    left.send([Verb.DONE, 7, Outcome.OK, {"k": "v"}], [bytearray(b"x")])
    reader.join(60)
    assert got[0] == (["ready"], [])
    assert got[1][0] == ["run", 7] and bytes(got[1][1][0]) == b"head"
    assert bytes(got[1][1][1]) == big
    assert got[2] == ([Verb.DONE, 7, Outcome.OK, {"k": "v"}], [bytearray(b"x")])
    left.close()
    right.close()


def test_a_closed_or_broken_peer_is_eof() -> None:
    left, right = pair()
    left.sock.sendall(struct.pack("<II", 1 << 30, 0))  # a header larger than allowed
    with pytest.raises(EOFError):
        right.recv()
    left.close()
    with pytest.raises(EOFError):
        right.recv()
    right.close()


def test_a_burst_is_read_from_one_buffer_and_reported_as_buffered() -> None:
    left, right = pair()
    left.send_many([(["run", i], [b"payload %d" % i]) for i in range(50)])
    first = right.recv()
    assert first == (["run", 0], [bytearray(b"payload 0")])
    assert right.buffered() and right.readable()  # the rest came in with the first read
    rest = [right.recv() for _ in range(49)]
    assert [h[1] for h, _ in rest] == list(range(1, 50))
    assert not right.buffered()
    left.close()
    right.close()

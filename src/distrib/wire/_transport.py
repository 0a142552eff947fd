"""ZeroMQ sockets carrying protocol messages: send and receive whole messages.

The worker binds a ROUTER (one routing id per connected peer); a Main connects one DEALER per
worker. A Main that listens binds a ROUTER too, and a worker that dials it connects a DEALER
(``--connect``). Key-based CURVE security plugs in here: the bound ROUTER is the CURVE server.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any, cast

import zmq

from distrib.wire import _carry, _codec
from distrib.wire._keys import KeyPair
from distrib.wire._limits import MAX_MESSAGE_BYTES, ROUTER_RCVHWM, SNDHWM_BOUNDED, piece_bytes
from distrib.wire._messages import Message

# A peer sending a frame over MAX_MESSAGE_BYTES (as it is on the wire) is disconnected by
# libzmq.
_COPY_THRESHOLD = 64 * 1024
# pyzmq's flags and options as plain ints: as its enums, each ``&`` or comparison builds an
# enum member (microseconds, several times a message).
_SNDMORE, _NOBLOCK, _EVENTS, _POLLIN = (int(zmq.SNDMORE), int(zmq.NOBLOCK), int(zmq.EVENTS),
                                        int(zmq.POLLIN))


def router(ctx: zmq.Context[Any], endpoint: str, key: KeyPair | None = None,
           bounded: bool = False) -> tuple[zmq.Socket[Any], str]:
    """Bind a ROUTER at ``endpoint`` (port 0 picks a free port); return it and its address.

    With ``key`` it is a CURVE server: every connection is encrypted and must pass the ZAP
    handler bound in ``ctx`` (the daemon's authorized-keys check). ``bounded``: at most
    ``SNDHWM_BOUNDED`` messages wait in it for each peer; send with ``try_send``, which says
    when a peer's are full (the worker's: see ``worker/_backlog.py``).
    """
    sock: zmq.Socket[Any] = ctx.socket(zmq.ROUTER)
    if key is not None:
        sock.curve_server = True
        sock.curve_secretkey = key.secret.encode()
        sock.curve_publickey = key.public.encode()
    _common(sock)
    # Per connected Main, at most this many messages wait in libzmq for the daemon to read
    # them; beyond, libzmq stops reading that connection (the Main keeps the rest), so a
    # flooding Main cannot fill the worker's memory while the daemon is busy.
    sock.setsockopt(zmq.RCVHWM, ROUTER_RCVHWM)
    if bounded:
        sock.setsockopt(zmq.SNDHWM, SNDHWM_BOUNDED)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # (a full peer raises Again, not a drop)
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        endpoint = endpoint[:-2] + ":*"
    try:
        sock.bind(endpoint)
    except zmq.ZMQError:
        sock.close(0)  # (else its context never ends)
        raise
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def dealer(ctx: zmq.Context[Any], endpoint: str, server_key: str | None = None,
           key: KeyPair | None = None, retry_max_ms: int = 500,
           connect: bool = True, bounded: bool = False) -> zmq.Socket[Any]:
    """Connect a DEALER to ``endpoint`` (a worker's, or a listening Main's); CURVE when the
    server's key is given. libzmq retries a refused connection after 0.1 s, then twice as
    long each time, up to ``retry_max_ms`` (half a second: a worker started after its Main
    is connected, and gets work, within a second of its start; a try costs a refused SYN).
    ``connect=False``: the caller connects it (after attaching a monitor: events before that
    are lost). ``bounded``: as for ``router``."""
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    if server_key is not None:
        own = key or _ephemeral()
        sock.curve_serverkey = server_key.encode()
        sock.curve_publickey = own.public.encode()
        sock.curve_secretkey = own.secret.encode()
    _common(sock)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, retry_max_ms)
    if bounded:
        sock.setsockopt(zmq.SNDHWM, SNDHWM_BOUNDED)
    if connect:
        sock.connect(endpoint)
    return sock


_monitors = itertools.count()


def monitor(sock: zmq.Socket[Any], events: int) -> zmq.Socket[Any]:
    """A socket that receives ``sock``'s ``events``, as pyzmq's ``get_monitor_socket`` makes,
    but with no high-water mark. libzmq's I/O thread sends each event with a blocking send:
    a monitor left unread past its mark (2,000 events) froze every socket of its context, and
    ``disable_monitor`` then waited for good (libzmq issue 3575). Events are small; a
    monitor read only at times holds them until then."""
    address = f"inproc://distrib-monitor-{next(_monitors)}"
    sock.monitor(address, events)
    pair: zmq.Socket[Any] = sock.context.socket(zmq.PAIR)
    pair.setsockopt(zmq.RCVHWM, 0)  # (the inproc pipe's mark is none when either side's is)
    pair.setsockopt(zmq.LINGER, 0)
    pair.connect(address)
    return pair


def close_monitored(sock: zmq.Socket[Any] | None, monitor: zmq.Socket[Any] | None) -> None:
    """Close a DEALER and the socket that monitors it."""
    if sock is not None:
        sock.disable_monitor()
        sock.close(0)
    if monitor is not None:
        monitor.close(0)


def _common(sock: zmq.Socket[Any]) -> None:
    # No lingering on close, the size limit, and no high-water marks: the Main bounds what is
    # in flight itself (the scheduler's per-worker depth), so zmq must not drop or block (a
    # worker bounds what waits for each Main: ``bounded``).
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)


def _ephemeral() -> KeyPair:
    public, secret = zmq.curve_keypair()
    return KeyPair(public.decode(), secret.decode())


def parts(message: Message, max_frame: int = MAX_MESSAGE_BYTES) -> list[list[Any]]:
    """The wire messages that carry ``message``, in order: its payload frames cut into pieces
    that the receiver's limit ``max_frame`` takes (``piece_bytes``), and carried ahead of it
    when they are more than one piece (``wire/_carry.py``)."""
    piece = piece_bytes(max_frame)
    return _carry.split(_codec.encode(message, piece), piece)


def send(sock: zmq.Socket[Any], message: Message, peer: bytes | None = None,
         max_frame: int = MAX_MESSAGE_BYTES) -> None:
    """Send ``message`` (to ``peer``, on a ROUTER) as its ``parts``. Large frames go without
    a copy."""
    for frames in parts(message, max_frame):
        _put(sock, frames, peer, 0)


def try_send(sock: zmq.Socket[Any], frames: list[Any], peer: bytes | None = None) -> bool:
    """Send one of a message's ``parts`` without waiting; False (nothing sent) when the
    peer's queue on a ``bounded`` socket is full."""
    try:
        _put(sock, frames, peer, _NOBLOCK)
    except zmq.Again:
        return False
    return True


def _put(sock: zmq.Socket[Any], frames: list[Any], peer: bytes | None, flags: int) -> None:
    # (only the first frame can find the queue full: libzmq takes the rest of a message whose
    # first frame it took)
    if peer is not None:
        frames = [peer, *frames]
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        big = memoryview(frame).nbytes >= _COPY_THRESHOLD
        sock.send(frame, (_SNDMORE if i < last else 0) | flags, copy=not big)


def recv_frames(sock: zmq.Socket[Any]) -> list[Any]:
    """Receive one multipart message without blocking (raises ``zmq.Again`` when none); a
    ``Carried`` of the socket's peers turns those carried ahead into whole messages."""
    # (pyzmq's recv_multipart asks the socket whether more follows, with enum flags: a
    # frame says so itself)
    frame = sock.recv(_NOBLOCK, copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(_NOBLOCK, copy=False)
        frames.append(frame)
    return frames


def readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message waits on ``sock`` (asked, not tried: a receive that finds nothing
    raises, which costs more)."""
    return bool(cast(int, sock.get(_EVENTS)) & _POLLIN)


def monitor_event(monitor: zmq.Socket[Any], flags: int = 0) -> dict[str, Any]:
    """The next event of a socket monitor: ``event``, ``value`` and ``endpoint``, as pyzmq's
    ``recv_monitor_message`` gives them (whose module imports asyncio: 14 ms at every start of
    a Main and a daemon)."""
    frames = monitor.recv_multipart(flags)
    if len(frames) != 2 or len(frames[0]) != 6:
        raise zmq.ZMQError(msg=f"not a monitor event: {frames!r}")
    event, value = struct.unpack("=hi", frames[0])
    return {"event": event, "value": value, "endpoint": frames[1]}

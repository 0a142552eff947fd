"""The socket a Main listens on for workers that dial it (``listen``), and who may dial.

The Main binds a ROUTER as the CURVE server: libzmq asks this Main's ZAP socket about every
handshake, and only the public keys of ``authorized_workers`` (reread when the file changes)
get through; a refused key is logged with the address it came from. A worker that got through
says ``Dial`` first; the Main answers ``Hello`` and from there on serves it as a link of its
own (``_links``), addressed by its routing id. The socket's monitor tells of closed
connections, by file descriptor: a worker killed with -9 is lost at once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import zmq

from distrib import _process
from distrib._errors import ConfigError
from distrib.wire import _keys, _transport, _zap
from distrib.wire._keys import KeyPair

log = logging.getLogger("distrib")



class Listener:
    """The bound ROUTER, its ZAP check of workers' keys, and its monitor."""

    def __init__(self, ctx: zmq.Context[Any], listen: str, key: KeyPair,
                 authorized_file: Path) -> None:
        self.authorized_file = authorized_file
        _process.more_open_files(True)  # (workers dial in: so may anyone who reaches the port)
        self._keys = _keys.Watched(authorized_file, _keys.read_authorized, "authorized workers")
        self._refusals = _zap.Refusals()
        # The ZAP socket is bound before the ROUTER: libzmq asks it about the first handshake.
        self.zap: zmq.Socket[Any] = ctx.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(_zap.ENDPOINT)
        try:
            self.sock, self.address = _transport.router(ctx, f"tcp://{listen}", key)
        except zmq.ZMQError as exc:
            self.zap.close(0)
            raise ConfigError(f"cannot listen for workers on {listen}: {exc.strerror}") from None
        self.monitor = _transport.monitor(self.sock, zmq.EVENT_DISCONNECTED)
        log.info("listening for workers on %s (%d authorized key(s) in %s)", self.address,
                 len(self.authorized), authorized_file)

    def sockets(self) -> list[zmq.Socket[Any]]:
        return [self.sock, self.zap, self.monitor]

    def receive(self) -> tuple[bytes, list[Any]]:
        """A routing id and the frames it sent (raises ``zmq.Again`` when none is waiting)."""
        frames = _transport.recv_frames(self.sock)
        return frames[0].bytes, frames[1:]

    @staticmethod
    def origin(frame: Any) -> tuple[str, int, str]:
        """The public key, connection (file descriptor) and address a received frame came
        from; ("", -1, "") for what libzmq cannot say."""
        try:
            return (frame.get("User-Id"), frame.get(zmq.SRCFD), frame.get("Peer-Address"))
        except zmq.ZMQError:
            return "", -1, ""

    def closed(self) -> list[int]:
        """The file descriptors of the connections that closed since the last call."""
        out = []
        while True:
            try:
                out.append(_transport.monitor_event(self.monitor, zmq.NOBLOCK)["value"])
            except zmq.Again:
                return out

    @property
    def authorized(self) -> dict[str, str]:
        """The authorized workers' keys, mapped to their names (the file's comments)."""
        return self._keys.value

    def reload(self) -> None:
        """Reread the authorized keys if the file changed (a broken file keeps the old list)."""
        if self._keys.reload():
            log.info("authorized workers: %d key(s) from %s", len(self.authorized),
                     self.authorized_file)

    def answer_zap(self) -> None:
        """Let a worker's handshake through if its key is authorized (else log it)."""
        try:
            request = _zap.Request(self.zap.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return
        ok = request.curve and request.key in self.authorized
        if not ok and request.curve:  # (a key added a moment ago, before the next tick's look:
            # a launcher writes it just before its worker dials)
            self.reload()
            ok = request.key in self.authorized
        if not ok and self._refusals.due(request.key):
            log.warning("refused a worker dialling from %s: key %s is not in the authorized "
                        "workers %s (add its .pub line there to accept it)",
                        request.address, request.key or "(none)", self.authorized_file)
        self.zap.send_multipart(request.answer(ok))

    def name_of(self, key: str) -> str:
        """The name an authorized key has in the file (its comment), or ""."""
        return self.authorized.get(key, "")

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(linger=500)  # (the goodbyes still go out)
        self.zap.close(0)

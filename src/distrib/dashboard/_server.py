"""The live web dashboard a Main serves when asked (``init(dashboard=True)``).

One page (``static/``, served from the package: it works offline) that reads
``/api/snapshot`` every half second and draws workers, calls by function, throughput, recent
failures and the workspace. The snapshot is what the session's I/O thread last published
(``main/_stats.py``); serving it takes no lock the I/O thread would wait on. The server is
uvicorn running a Starlette app in a thread of its own.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import socket
import threading
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from distrib._errors import ConfigError

log = logging.getLogger("distrib")
STATIC = Path(__file__).parent / "static"
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; if that port is taken, on a free one (said)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            sock.close()
            raise ConfigError(f"dashboard: cannot listen on {host}:{port}: {exc.strerror}; "
                              "set dashboard to another \"host:port\"") from None
        sock.bind((host, 0))
        log.warning("dashboard: port %d is taken (another dashboard?); using port %d instead",
                    port, sock.getsockname()[1])
    sock.listen(64)
    return sock


class Dashboard:
    """The dashboard's server, started at once, for ``session`` (its ``snapshot``)."""

    def __init__(self, session: Any, where: str) -> None:
        host, _, port = where.rpartition(":")
        self._session = session
        self._sock = _bind(host, int(port))
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self._sock.getsockname()[1]}/"
        middleware = []
        if _is_loopback(host):  # a page from elsewhere cannot read it by rebinding its name
            middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES))
        else:
            log.warning("dashboard: listening on %s, which is not loopback: whoever reaches it "
                        "sees this run's function names, workers and errors", host)
        app = Starlette(routes=[
            Route("/", self._page),
            Route("/api/snapshot", self._snapshot),
            Mount("/static", StaticFiles(directory=STATIC)),
        ], middleware=middleware)
        # (asyncio's own loop: no process-wide event loop policy is set for the user's code)
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False,
                                lifespan="off", loop="asyncio", ws="none")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="distrib-dashboard", daemon=True)
        self._thread.start()
        log.warning("dashboard: %s", self.url)

    async def _page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def _snapshot(self, request: Request) -> Response:
        snap = self._session.snapshot  # (the I/O thread's latest; never changed once published)
        try:  # (ASCII: a worker's text may hold what UTF-8 cannot encode)
            body = json.dumps(snap or {"starting": True}, ensure_ascii=True, allow_nan=False,
                              separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            body, status = json.dumps({"error": f"the snapshot cannot be shown: {exc}"}), 500
        else:
            status = 200
        return Response(body, status, media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    def stop(self) -> None:
        """Stop serving (open pages show the server is gone)."""
        self._server.should_exit = True
        self._thread.join(5)
        self._sock.close()

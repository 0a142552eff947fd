"""The process's one session: set up by ``init()`` or the first call, ended by ``shutdown()``.

After ``shutdown()`` (explicit, or at interpreter exit) calls end as ``Cancelled`` at once
instead of starting a new session behind the user's back; ``init()`` sets up again.

A process forked from a Main (a ``fork`` multiprocessing pool, ``os.fork``) has none of the
session's threads: it forgets the session it inherited and sets up its own at its first call.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distrib import _config, _runtime
from distrib._errors import Cancelled, ConfigError, MainGuardError
from distrib._response import Response

if TYPE_CHECKING:  # (imported once the local cluster's daemon is starting: see ``_start``)
    from distrib._local import LocalCluster
    from distrib.main._session import Session

SHUT_DOWN = "distrib was shut down; call distrib.init() to set up again"

_session: Session | None = None
_shut_down = False  # shutdown() was called and init() not since: calls end as Cancelled
_lock = threading.Lock()
_inherited: list[Session] = []  # sessions a forked child forgot: kept, never closed or collected


def _forget_after_fork() -> None:
    """In a forked child: the inherited session's threads are gone, its sockets are its
    parent's (closing them, or a collector doing so, would disturb the parent's links)."""
    global _session, _lock
    if _session is not None:
        _inherited.append(_session)
    _session, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def submit(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Response[Any]:
    """Submit a call in the current session, set up from configuration on first use."""
    session = _session or _start_implicitly()
    if session is None:
        response: Response[Any] = Response(0, fn.__qualname__, None)
        response._set_outcome(None, exc=Cancelled(f"call of {fn.__qualname__}: {SHUT_DOWN}"))
        return response
    return session.submit(fn, args, kwargs)


def slot_figures() -> tuple[int, int]:
    """(slots busy, slots offered) across the current session's workers, as its I/O thread
    last published them; (0, 0) without a session. Safe from any thread."""
    session = _session
    if session is None:
        return 0, 0
    figures = session.scheduler.slot_figures
    return figures.busy, figures.offered


def _start_implicitly() -> Session | None:
    global _session
    with _lock:
        if _session is None and not _shut_down:
            _session = _start(_config.Overrides())
        return _session


def init(overrides: _config.Overrides) -> Session:
    """Set up distrib explicitly (see ``distrib.init``)."""
    global _session, _shut_down
    with _lock:
        if _session is not None:
            if not overrides.given():
                return _session
            raise ConfigError("distrib is already set up (by init() or a first call); "
                              "call distrib.shutdown() before init() with new settings")
        _session = _start(overrides)
        _shut_down = False
        return _session


def _start(overrides: _config.Overrides) -> Session:
    if _runtime.mode is _runtime.Mode.WORKER_IMPORT:  # (a session there would start a
        # local cluster of its own, whose executors import the script again, and so on)
        raise MainGuardError(
            f"distrib.init() was called while a worker imported the main script "
            f"{_runtime.main_script}: it would set up distrib again on every worker. Put it "
            'under `if __name__ == "__main__":`, with the calls.')
    before = set(sys.modules)  # (what setting up imports is distrib's own, not the user's:
    # templates import the user's modules ahead, not these)
    script = main_file()
    settings = _config.load(None, overrides, script.parent if script else None)
    launch = abandon = None
    if settings.cluster is not None:
        if _runtime.launcher is None:
            raise ConfigError("a [cluster] needs `import distrib` (its launchers)")
        settings, launch, abandon = _runtime.launcher(settings)
    local = None
    try:
        local = _local_cluster(settings)
        _runtime.own_modules.update(set(sys.modules) - before)
        session = _session_class()(settings, script, local)
    except BaseException:
        if local is not None:
            local.stop()
        if abandon is not None:  # (what the launcher prepared: its folder, its keys)
            abandon()
        raise
    atexit.register(shutdown)
    if launch is not None:
        try:
            launch(session)
        except BaseException:
            session.close()
            raise
    return session


def main_file() -> Path | None:
    """The user's main script, if it is a plain .py file (not a REPL, not a tool's entry)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not path.endswith(".py"):
        return None
    resolved = Path(path).resolve()
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        if resolved.is_relative_to(Path(prefix).resolve()):
            return None
    return resolved


def _local_cluster(settings: _config.Settings) -> LocalCluster | None:
    """The embedded cluster, its daemon starting, when no worker is named, found or dialling
    in: started before the session's own imports, which its start then overlaps."""
    if settings.workers or settings.discovery.enabled or settings.listen is not None:
        return None
    from distrib._local import LocalCluster

    return LocalCluster(settings.local_threads, settings.cache_dir, settings.linger)


def _session_class() -> type[Session]:
    """The session's code, imported at the first session (60 ms: zmq, msgspec, the I/O
    loop), counted as distrib's own imports (not the user's environment)."""
    before = set(sys.modules)
    # pyzmq registers an atexit hook that stops its buffer collector, on first import of
    # this module; imported before ``shutdown`` is registered (atexit runs in reverse order),
    # the session says goodbye to its workers while pyzmq can still send.
    import zmq.utils.garbage  # noqa: F401

    from distrib.main._session import Session

    _runtime.own_modules.update(set(sys.modules) - before)
    return Session


def shutdown() -> None:
    """Tear down the session: unfinished tasks end as Cancelled, local workers stop."""
    global _session, _shut_down
    with _lock:
        session, _session = _session, None
        _shut_down = _shut_down or session is not None
    if session is not None:
        session.close()

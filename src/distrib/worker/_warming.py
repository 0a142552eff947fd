"""Executors started ahead of a Main's first call: its Hello names the distribution its
calls use and how many executors it would like ready (``warm``). The daemon fetches the
distribution at once, starts those executors when it (and the Main's Python environment) is
ready, and answers ``Warmed`` once they have imported it, so the first calls find them idle,
as a process pool's workers are."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from msgspec import Struct

from distrib.wire import _messages as m
from distrib.worker._corestate import ExecutorRecord
from distrib.worker._events import EnvKey


class Wish(Struct):
    dist: str
    env: str  # the Main's Python environment ("": the daemon's own)
    context: str
    count: int
    key: EnvKey | None = None  # set once its executors are started
    started: int = 0  # executors started for it (others of its key may have been there)


class Warming:
    """The Mains waiting for executors ahead: first for their distribution (and Python
    environment), then for their executors' imports."""

    def __init__(self) -> None:
        self._wishes: dict[bytes, Wish] = {}

    def __bool__(self) -> bool:
        return bool(self._wishes)

    def wish(self, peer: bytes, dist: str, env: str, context: str, count: int) -> None:
        self._wishes[peer] = Wish(dist, env, context, count)

    def startable(self, dist_ready: Callable[[str], bool], env_ready: Callable[[str], bool]
                  ) -> list[tuple[bytes, Wish]]:
        """The wishes whose distribution and environment are ready, their ``key`` set: the
        caller starts their executors (and says how many in ``started``)."""
        out = []
        for peer, w in self._wishes.items():
            if w.key is None and dist_ready(w.dist) and (not w.env or env_ready(w.env)):
                w.key = EnvKey(w.dist, 1, w.context)
                out.append((peer, w))
        return out

    def fail(self, why: str, dist: str = "", env: str = "", peer: bytes | None = None
             ) -> list[tuple[bytes, m.Warmed]]:
        """The distribution ``dist`` (or the environment ``env``) cannot be had (for ``peer``
        alone, if given): the Mains waiting for it hear why."""
        out = []
        for p, w in list(self._wishes.items()):
            if (w.key is None and (peer is None or p == peer)
                    and ((dist and w.dist == dist) or (env and w.env == env))):
                del self._wishes[p]
                out.append((p, m.Warmed(w.dist, 0, why)))
        return out

    def done(self, executors: Iterable[ExecutorRecord]) -> list[tuple[bytes, m.Warmed]]:
        """The Mains whose executors of their key are all ready (or gone): how many are."""
        ready: dict[EnvKey, int] = {}
        waiting: set[EnvKey] = set()
        for ex in executors:
            if ex.ready:
                ready[ex.key] = ready.get(ex.key, 0) + 1
            else:
                waiting.add(ex.key)
        out = []
        for peer, w in list(self._wishes.items()):
            if w.key is not None and w.key not in waiting:
                del self._wishes[peer]
                n = ready.get(w.key, 0)
                why = "" if n else (
                    "its executors stopped before they were ready (the worker's log says why)"
                    if w.started else "other executors hold every slot it may use")
                out.append((peer, m.Warmed(w.dist, n, why)))
        return out

    def forget(self, peer: bytes) -> None:
        self._wishes.pop(peer, None)

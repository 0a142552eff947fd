"""distrib on a ``distrib worker`` daemon whose executors run in its sandbox (bubblewrap, or
namespaces where it is missing): compare with ``distrib-worker``, the same without one."""

from __future__ import annotations

from bench.frameworks.distrib_worker import Framework as Unboxed


class Framework(Unboxed):
    """distrib with one sandboxing worker daemon of its own."""

    extra: tuple[str, ...] = ()

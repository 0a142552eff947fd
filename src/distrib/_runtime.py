"""Where this process stands: a Main, an executor importing the main script, or running a task.

Executors set the mode; ``@distributed`` calls read it to refuse import-time submission on a
worker (which would otherwise re-run the script's calls there) and to run nested calls.
"""

from __future__ import annotations

import enum
import functools
import os
import site
import sys
import threading
from collections.abc import Callable
from typing import Any

MAIN_ALIAS = "__distrib_main__"  # the name executors import the Main's script under


class Mode(enum.Enum):
    MAIN = "main"  # a user's process: calls are submitted to workers
    WORKER_IMPORT = "worker-import"  # an executor importing the Main's script
    WORKER_TASK = "worker-task"  # an executor running a task: nested calls run in place


mode: Mode = Mode.MAIN
main_script: str = ""  # the main script's path inside the workspace, for messages
main_shipped: bool = False  # set by the session: is the Main's __main__ importable on workers?
shipped_root: str | None = None  # set by the session: the workspace folder shipped, if any
shipped_as = ""  # in an executor: that folder as its modules' paths name it (not resolved)
own_modules: set[str] = set()  # modules first imported by distrib's own imports
# Set by the API layer (``distrib._cluster.prepare``): a session's settings for a launched
# cluster, and what launches it once the session listens (``main`` does not import ``launch``).
launcher: Callable[[Any], tuple[Any, Callable[[Any], None], Callable[[], None]]] | None = None
# In an executor: why it ends once its current task is done (an Executor's max_tasks_per_child),
# and the calls it ran per Executor (its key), for their initializer and max_tasks_per_child.
retire: str = ""
executor_calls: dict[str, int] = {}
# Threads distrib keeps in this process (by ident): an executor tells the threads a task left
# running from these.
own_threads: set[int] = set()


def own_thread() -> None:
    """Count the calling thread as distrib's own (a thread pool's initializer, say)."""
    own_threads.add(threading.get_ident())


def resolves_on_workers(module_name: str) -> bool:
    """Whether workers can import ``module_name``: it is installed, or in the shipped workspace.

    (A module next to a script run without a workspace, say, does not travel by reference.)
    Asked at every call's pickling: the answer is remembered per module and workspace.
    """
    return _resolves(module_name, shipped_root)


@functools.lru_cache(maxsize=1024)
def _resolves(module_name: str, root: str | None) -> bool:
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if module is None or file is None:
        return True  # built in, or a namespace: nothing of ours to decide
    return file_resolves(module_name, file, root)


def file_resolves(module_name: str, file: str, root: str | None) -> bool:
    """Whether module ``module_name``, from ``file`` here, imports on workers: it is installed
    (under this interpreter's prefixes), or in the shipped workspace ``root`` at the path its
    name gives (``tests/test_x.py`` imported as ``test_x``, from a folder pytest put on
    ``sys.path``, is not: executors have the workspace's root on theirs, no more)."""
    path = os.path.realpath(file)
    prefixes = [os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix,
                                              site.getusersitepackages()}]
    if any(path.startswith(prefix + os.sep) for prefix in prefixes):
        return True
    if root is None or not path.startswith(root + os.sep):
        return False
    if module_name in ("__main__", MAIN_ALIAS):
        return True  # the main script, imported by its path
    relative = os.path.splitext(os.path.relpath(path, root))[0].split(os.sep)
    if relative[-1] == "__init__":
        relative.pop()
    return relative == module_name.split(".") or any(
        path.startswith(folder + os.sep) for folder in _local_installs())


@functools.cache
def _local_installs() -> tuple[str, ...]:
    """The folders of packages installed from this machine's folders (an editable install of
    the workspace's own package, say): workers get them built as wheels."""
    import importlib.metadata
    import json
    from urllib.parse import unquote, urlparse

    folders = []
    for dist in importlib.metadata.distributions():
        try:
            url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
        except (ValueError, AttributeError):
            continue
        if isinstance(url, str) and url.startswith("file://"):
            folders.append(os.path.realpath(unquote(urlparse(url).path)))
    return tuple(folders)


# Executors import the main script under MAIN_ALIAS; make the same name resolve here so a
# result referring to a class of the script unpickles to the Main's own class (as
# multiprocessing does with __mp_main__).
if "__main__" in sys.modules:
    sys.modules.setdefault(MAIN_ALIAS, sys.modules["__main__"])

"""Outcomes reported by workers, settled on the Main: results, errors, retries, and the files
tasks wrote (``@distributed(outputs=...)``), written into this Main's workspace.

A worker's word is not trusted here either: every path is checked as strictly as a worker
checks a manifest (relative, no ``..``, no absolute or drive paths) and must not lead out of
the workspace through a link; a task whose outputs break that has none of them written.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any


from distrib import _runtime, _sealed, _serialize
from distrib._errors import (
    Cancelled,
    DependencyError,
    SerializationError,
    TaskDiskExceeded,
    TaskTimeout,
    WorkerCrashed,
    WorkspaceError,
)
from distrib._response import Response
from distrib.main._scheduler import Scheduler
from distrib.main._tracked import Task
from distrib.wire import _messages as m
from distrib.wire._messages import Outcome
from distrib.wire._record import ErrorRecord
from distrib.workspace._manifest import check_relative_path

log = logging.getLogger("distrib")


class Outputs:
    """Writes tasks' output files under ``root``; remembers which task wrote each path."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._writer: dict[str, str] = {}  # path -> the task that wrote it last

    def write(self, task: str, files: Any, globs: tuple[str, ...]) -> None:
        """Write ``files`` ((relative path, bytes[, mode]) of each) of ``task``;
        ``WorkspaceError`` and nothing written if any path is not a plain path inside the
        workspace matching ``globs`` (the task's ``outputs=``). Each file gets the mode the
        task gave it, under this process's umask (as ``open`` with that mode here would: a
        worker cannot make the user's files writable by others where the umask forbids it)."""
        import pathspec  # (20 ms: imported where matched, not by every process)

        spec = pathspec.GitIgnoreSpec.from_lines(globs)
        targets = []
        for path, data, *mode in files:
            try:
                check_relative_path(path)
            except WorkspaceError as exc:
                raise WorkspaceError(f"{task} sent back an output file with a bad path: {exc}; "
                                     "nothing was written") from None
            if not spec.match_file(path):
                raise WorkspaceError(f"{task} sent back output file {path!r}, which its "
                                     f"outputs= {list(globs)} do not name; nothing was written")
            target = self.root / path
            real = os.path.realpath(target.parent)  # (the file itself is replaced, not followed)
            if real != str(self.root) and not real.startswith(str(self.root) + os.sep):
                raise WorkspaceError(f"{task} sent back output file {path!r}, which would be "
                                     f"written outside the workspace {self.root} through a "
                                     "link; nothing was written")
            targets.append((path, target, data, int(mode[0] if mode else 0o666) & 0o777))
        written: list[str] = []  # all to temporary files first, then all renamed
        try:
            for path, target, data, mode in targets:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = _create(target.parent, mode)
                written.append(tmp)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
        except BaseException:
            for tmp in written:
                os.unlink(tmp)
            raise
        for tmp, (path, target, _, _) in zip(written, targets):
            earlier = self._writer.get(path)
            if earlier is not None and earlier != task:
                log.warning("output file %s was written by %s and now by %s: the later one "
                            "stays", path, earlier, task)
            self._writer[path] = task
            os.replace(tmp, target)


def _create(folder: Path, mode: int) -> tuple[int, str]:
    """A new file of a unique name in ``folder``, opened for writing, made with ``mode`` (under
    the umask: ``mkstemp`` would make it 0600)."""
    while True:
        path = os.path.join(folder, f".distrib-{secrets.token_hex(8)}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), path
        except FileExistsError:
            continue


_NO_MODULE = re.compile(r"^No module named '([\w.]+)'")


def environment_problem(info: dict[str, str]) -> str:
    """Why a task's error shows its worker lacks this Main's environment, or "": the worker
    could not build it, or cannot import a module that imports here from what it describes
    (an installed package, the shipped workspace)."""
    record = ErrorRecord.from_wire(info)
    if record.type_name == "distrib.DependencyError":
        return record.message
    found = _missing_here(record)
    if found is not None and _runtime.file_resolves(found[0], found[1], _runtime.shipped_root):
        return f"it cannot import {found[0]}, which this Main has ({record.message})"
    return ""


def unshipped_module(info: dict[str, str], where: str) -> DependencyError | None:
    """The error of a task that needed a module of this Main that no worker can import (not
    installed, not in the shipped workspace): that call's alone, the worker is not at fault."""
    found = _missing_here(ErrorRecord.from_wire(info))
    if found is None or _runtime.file_resolves(found[0], found[1], _runtime.shipped_root):
        return None
    name, origin = found
    shipped = (f"executors cannot import it by that name from the shipped workspace "
               f"{_runtime.shipped_root} (its root is on their sys.path)"
               if _runtime.shipped_root else "no workspace is shipped")
    return DependencyError(
        f"{where} needs module {name} ({origin}), which workers cannot import: it is not "
        f"installed and {shipped}. Ship the folder that holds it as the workspace "
        "(distrib.init(workspace=...), DISTRIB_WORKSPACE) or install it as a package")


def _missing_here(record: ErrorRecord) -> tuple[str, str] | None:
    """(name, file here) of the module a ``ModuleNotFoundError`` names, if it imports here."""
    found = _NO_MODULE.match(record.message)
    if record.type_name != "builtins.ModuleNotFoundError" or not found:
        return None
    name = found.group(1)
    for candidate in (name, name.partition(".")[0]):
        try:
            spec = importlib.util.find_spec(candidate)
        except (ImportError, ValueError):
            continue
        if spec is not None:
            origin = spec.origin if spec.has_location and spec.origin else None
            if origin is None and spec.submodule_search_locations:
                origin = next(iter(spec.submodule_search_locations), None)
            if origin is None:
                return None  # built in, frozen: nothing this Main ships
            return candidate, origin
    return None


Finish = Callable[[Response[Any], str, Any, BaseException | None], None]


def settle(task: Task, spec: m.ResultSpec, frames: Any, worker: str, where: str,
           scheduler: Scheduler, outputs: Outputs, link_id: str, finish: Finish) -> None:
    """Finish ``task``'s Response (through ``finish``: response, worker, value, error) with the
    outcome ``spec`` reported by ``worker`` (a crash within its retries puts it back in
    ``scheduler``; output files are written first)."""
    response: Response[Any] = task.response
    if spec.status is Outcome.OK:
        try:
            value = _serialize.loads(frames)
        except Exception as exc:
            finish(response, worker, None, SerializationError(
                f"the result of {where} does not unpickle here: {type(exc).__name__}: {exc}"))
            return
        if task.outputs:  # (result, [(path, bytes), ...]): files first, then the result
            try:
                value, files = value
                outputs.write(f"task {task.name}#{task.task_id}", files, task.outputs)
            except (WorkspaceError, OSError) as exc:
                finish(response, worker, None, exc)
                return
            except Exception as exc:  # a malformed answer must not stop the I/O thread
                finish(response, worker, None, WorkspaceError(
                    f"the output files of {where} are malformed ({type(exc).__name__}: "
                    f"{exc}); nothing was written"))
                return
        finish(response, worker, value, None)
    elif spec.status is Outcome.DEFERRED:
        scheduler.defer(link_id, task)
    elif spec.status in (Outcome.ERROR, Outcome.ENV_ERROR) and (
            problem := environment_problem(spec.info)):
        if not scheduler.workers[link_id].unable:
            log.warning("worker %s gets no more of this Main's tasks: %s", worker, problem)
        scheduler.cannot_provide(link_id, task, problem)
    elif spec.status in (Outcome.ERROR, Outcome.ENV_ERROR) and (
            unshipped := unshipped_module(spec.info, f"task {where}")):
        finish(response, worker, None, unshipped)
    elif spec.status in (Outcome.ERROR, Outcome.ENV_ERROR):
        error = _sealed.loads_error(frames, spec.info)
        if type(error) is TaskDiskExceeded:  # (the worker does not know the task's name)
            error = TaskDiskExceeded(f"task {where}: {error}")
        finish(response, worker, None, error)
    elif spec.status is Outcome.CRASHED:
        limit = spec.info.get("memory_limit", "")
        if scheduler.retry(task, int(limit) if limit.isdigit() else 0):
            log.info("%s crashed; retrying (%d of %d)", where, task.attempts, task.retries)
        else:
            finish(response, worker, None, WorkerCrashed(
                f"{where} crashed: {ErrorRecord.from_wire(spec.info).message}; tried "
                f"{task.attempts} time(s), retries={task.retries}"))
    elif spec.status is Outcome.TIMEOUT:
        finish(response, worker, None, TaskTimeout(
            f"{where} ran past its timeout of {task.timeout} s and was stopped"))
    else:
        finish(response, worker, None, Cancelled(f"{where} was cancelled"))

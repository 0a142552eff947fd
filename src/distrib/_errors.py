"""The exception tree: every error distrib raises is a ``DistribError``.

    DistribError
    ├── ConfigError           a setting is wrong (names the setting and the fix)
    ├── ProtocolError         a message broke the wire protocol (dropped, logged)
    ├── ConnectionFailed      a worker could not be reached or refused the handshake
    │   └── AuthError         a key was refused: the worker's, or this Main's
    ├── WorkspaceError        the workspace could not be scanned, shipped or unpacked
    ├── SerializationError    a call, result or error could not be pickled or unpickled
    ├── MainGuardError        a call or init() made while a worker imported the main script
    ├── RemoteError           the task raised an exception that could not travel back
    ├── WorkerCrashed         the executor running the task died (after all retries)
    ├── WorkerLost            the worker running the task went away (after all retries)
    ├── TaskTimeout           the task ran past its ``timeout``          (also TimeoutError)
    ├── TaskDiskExceeded      the task wrote more than a worker's disk limit allows
    ├── WaitTimeout           ``unwrap(timeout=...)`` gave up waiting      (also TimeoutError)
    ├── Cancelled             the task was cancelled           (also futures.CancelledError)
    ├── InitializerFailed     an ``Executor``'s initializer raised      (also BrokenExecutor)
    └── LaunchError           a launcher could not start workers (a refused batch job...)

An exception raised by the user's function is not wrapped: ``unwrap()`` raises the same type,
with its own ``__cause__``, ``__context__`` and notes, and a ``RemoteTraceback`` carrying the
remote traceback text as the last ``__cause__`` of its chain (its ``__cause__`` when it had none).
Only an exception whose class does not exist on the Main comes back as ``RemoteError``.
"""

from __future__ import annotations

import concurrent.futures


class DistribError(Exception):
    """Root of every error distrib raises."""


class ConfigError(DistribError):
    """A setting is missing or invalid; the message names it and what to do."""


class ProtocolError(DistribError):
    """A message does not follow the wire protocol."""


class ConnectionFailed(DistribError):
    """A worker could not be reached, or the handshake with it failed."""


class AuthError(ConnectionFailed):
    """A worker refused this Main's key, or did not prove the key configured for it."""


class WorkspaceError(DistribError):
    """The workspace could not be scanned, shipped, verified or unpacked."""


class DependencyError(DistribError):
    """The task's Python environment (its packages, its Python version) could not be built or
    imported on any worker; the message names the packages and each worker's reason."""


class SerializationError(DistribError):
    """A call, its result or its error could not be pickled or unpickled."""


class MainGuardError(DistribError):
    """A ``@distributed`` function (or ``distrib.init()``) was called while a worker imported
    the main script.

    The main script is imported on workers so its functions and classes resolve; calls made
    at import time would run again there. Put them under ``if __name__ == "__main__":``.
    """


class RemoteError(DistribError):
    """The task raised an exception that could not be rebuilt as itself; ``why`` says why."""

    def __init__(self, type_name: str, message: str, traceback: str, why: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.why = why

    def __str__(self) -> str:
        why = f"\nNot rebuilt as itself: {self.why}." if self.why else ""
        return f"{self.type_name}: {self.message}{why}\n\nRemote traceback:\n{self.traceback}"

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str, str]]:
        return (RemoteError, (self.type_name, self.message, self.traceback, self.why))


class WorkerCrashed(DistribError):
    """The executor process running the task died, on every try."""


class LaunchError(DistribError):
    """No worker could be started where a launcher was told to: no SSH host started one (each
    host's reason named), or ``sbatch`` refused a job, or there is no Slurm here (the job
    named)."""


class WorkerLost(DistribError):
    """The worker running the task disconnected or stopped answering, on every try."""


class TaskTimeout(DistribError, TimeoutError):
    """The task ran longer than its ``timeout`` and was stopped on the worker."""


class TaskDiskExceeded(DistribError):
    """The task wrote more than the worker allows (``--max-task-disk``, or with the rest of
    its cache ``--max-cache``): it was stopped and what it wrote dropped; the message names
    the limit. It is not run again."""


class WaitTimeout(DistribError, TimeoutError):
    """``unwrap(timeout=...)`` or ``wait`` gave up before the task finished."""


class Cancelled(DistribError, concurrent.futures.CancelledError):
    """The task was cancelled before it finished."""


class NestedDeadlock(DistribError):
    """A call made from inside a task can never start: every slot it could run on is held by
    a task waiting for its own calls (each worker's ``--max-parked`` lets no more wait
    without their slots). The message names the chain of calls."""

    @classmethod
    def of(cls, chain: str, where: str) -> NestedDeadlock:
        """``chain`` (``task leaf#9, called by ...``) cannot start on ``where``."""
        return cls(f"{chain} cannot start: every slot of {where} is held by a task waiting for "
                   "the calls it made, and no more may wait without their slots (each worker's "
                   "--max-parked); give the workers more slots or a higher --max-parked, or "
                   "wait for fewer calls at once")


class InputFailed(DistribError):
    """A ``Response`` passed as an argument of the call ended in an error (or was
    cancelled): the call was not made. Its ``__cause__`` is that input's error."""


class InitializerFailed(DistribError, concurrent.futures.BrokenExecutor):
    """The ``initializer`` of a ``distrib.Executor`` raised (its ``__cause__``): as with
    ``ProcessPoolExecutor``, the executor is broken and takes no more calls."""


class RemoteTraceback(Exception):
    """Carries the remote traceback text; set as ``__cause__`` of a re-raised task error."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text



"""Where this process stands: a Main, an executor importing the main script, or running a task.

Executors set the mode; ``@distributed`` calls read it to refuse import-time submission on a
worker (which would otherwise re-run the script's calls there) and to run nested calls.
"""

from __future__ import annotations

import enum
import sys

from distrib.wire._record import MAIN_ALIAS as MAIN_ALIAS


class Mode(enum.Enum):
    MAIN = "main"  # a user's process: calls are submitted to workers
    WORKER_IMPORT = "worker-import"  # an executor importing the Main's script
    WORKER_TASK = "worker-task"  # an executor running a task: nested calls run in place


mode: Mode = Mode.MAIN
main_script: str = ""  # the main script's path inside the workspace, for messages
main_shipped: bool = False  # set by the session: is the Main's __main__ importable on workers?

# Executors import the main script under MAIN_ALIAS; make the same name resolve here so a
# result referring to a class of the script unpickles to the Main's own class (as
# multiprocessing does with __mp_main__).
if "__main__" in sys.modules:
    sys.modules.setdefault(MAIN_ALIAS, sys.modules["__main__"])

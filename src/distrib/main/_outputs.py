"""Files tasks wrote (``@distributed(outputs=...)``), written into this Main's workspace.

A worker's word is not trusted here either: every path is checked as strictly as a worker
checks a manifest (relative, no ``..``, no absolute or drive paths) and must not lead out of
the workspace through a link; a task whose outputs break that has none of them written.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from distrib._errors import WorkspaceError
from distrib.workspace._manifest import check_relative_path

log = logging.getLogger("distrib")


class Outputs:
    """Writes tasks' output files under ``root``; remembers which task wrote each path."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._writer: dict[str, str] = {}  # path -> the task that wrote it last

    def write(self, task: str, files: list[tuple[str, Any]]) -> None:
        """Write ``files`` ((relative path, bytes) pairs) of ``task``; ``WorkspaceError`` and
        nothing written if any path is not a plain path inside the workspace."""
        targets = []
        for path, data in files:
            try:
                check_relative_path(path)
            except WorkspaceError as exc:
                raise WorkspaceError(f"{task} sent back an output file with a bad path: {exc}; "
                                     "nothing was written") from None
            target = self.root / path
            real = os.path.realpath(target.parent)  # (the file itself is replaced, not followed)
            if real != str(self.root) and not real.startswith(str(self.root) + os.sep):
                raise WorkspaceError(f"{task} sent back output file {path!r}, which would be "
                                     f"written outside the workspace {self.root} through a "
                                     "link; nothing was written")
            targets.append((path, target, data))
        for path, target, data in targets:
            earlier = self._writer.get(path)
            if earlier is not None and earlier != task:
                log.warning("output file %s was written by %s and now by %s: the later one "
                            "stays", path, earlier, task)
            self._writer[path] = task
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".distrib-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)

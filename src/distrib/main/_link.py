"""The Main's link to one worker: the wire's ``Link`` and what the Main knows of that worker."""

from __future__ import annotations

from dataclasses import dataclass

from distrib.wire import _link
from distrib.wire._link import LinkState


@dataclass(eq=False, kw_only=True)
class Link(_link.Link):
    """A link of this Main (``w0``, ``w1``...), rebuilt after the worker is lost."""

    link_id: str
    state: LinkState = LinkState.CONNECTING  # (connected as the I/O thread starts)
    name: str = ""  # the worker's, as its Welcome says
    shm: bool = False  # large frames go through /dev/shm (its Welcome says it shares ours)
    worker_state: str = "serving"  # its owner's word: "serving", "paused" or "draining"
    building: bool = False  # it said it builds this Main's environment, and ran nothing since
    has_workspace: bool = False  # it ran a task of this Main: it holds the workspace

    @property
    def label(self) -> str:
        return f"{self.name} ({self.address})" if self.name else self.address

"""An error as plain data: what crosses the wire next to (or instead of) the pickled exception.

Executors, the daemon and the Main build records with ``ErrorRecord.of`` (or the constructor)
and read them with ``ErrorRecord.from_wire``; on the wire a record is a map of ``type``,
``message`` and ``traceback`` texts, each capped so a record always fits in a header.
"""

from __future__ import annotations

import traceback as _traceback
from dataclasses import dataclass
from typing import Any

from distrib._runtime import MAIN_ALIAS
from distrib.wire._limits import cap_text


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """Type name (``module.Qualname``), message and traceback text of an error."""

    type_name: str
    message: str
    traceback: str = ""

    @classmethod
    def of(cls, exc: BaseException, with_traceback: bool = True,
           chain: bool = True) -> ErrorRecord:
        """The record of ``exc``, named as the Main knows its class; ``chain``: the traceback
        text includes its causes and contexts."""
        kind = type(exc)
        module = kind.__module__
        if module == MAIN_ALIAS:
            module = "__main__"
        elif module == "distrib._errors":
            module = "distrib"
        text = "".join(_traceback.format_exception(exc, chain=chain)) if with_traceback else ""
        return cls(f"{module}.{kind.__qualname__}", str(exc), text)

    def to_wire(self) -> dict[str, str]:
        return {"type": self.type_name, "message": cap_text(self.message),
                "traceback": cap_text(self.traceback, keep_end=True)}

    @classmethod
    def from_wire(cls, info: dict[str, Any]) -> ErrorRecord:
        """Read a record from a message; missing or odd fields read as empty text."""
        def text(key: str, default: str = "") -> str:
            value = info.get(key, default)
            return value if isinstance(value, str) else default

        return cls(text("type", "?"), text("message"), text("traceback"))

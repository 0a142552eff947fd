"""The live web dashboard a Main serves when asked (``init(dashboard=True)``): ``_server``
serves the page in ``static/`` and the session's latest snapshot as JSON."""

from distrib.dashboard._server import Dashboard

__all__ = ["Dashboard"]

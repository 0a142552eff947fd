"""The Main's side: session lifecycle, the I/O thread, scheduling.

Imports ``wire`` and ``workspace``; never ``worker`` or ``executor`` (local daemons are started
as processes).
"""

import sys as _sys

from distrib import _runtime as _rt

_before = set(_sys.modules)
from distrib.main import _current  # noqa: E402,F401  (what a session needs, imported now)

_rt.own_modules.update(set(_sys.modules) - _before, [__name__])
del _before

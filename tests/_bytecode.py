"""A pytest plugin that ``./run test`` loads before the others: it lets pytest keep what it
rewrites for assertions (the test modules, and the plugins such as Hypothesis) in __pycache__
even where PYTHONDONTWRITEBYTECODE is set, so that each of the suite's processes does not
rewrite them again. It changes this process only: the processes the tests start inherit the
environment as it is."""

from __future__ import annotations

import sys

sys.dont_write_bytecode = False

"""The Main's side: session lifecycle, the I/O thread, scheduling.

Imports ``wire`` and ``workspace``; never ``worker`` (local daemons are started as processes).
"""

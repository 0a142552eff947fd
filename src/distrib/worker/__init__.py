"""The worker daemon: the I/O loop, its pure state, executor processes.

Imports ``wire`` and ``workspace``; never ``main``.
"""

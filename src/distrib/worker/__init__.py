"""The worker daemon: the I/O loop, its pure state, executor processes.

Imports ``wire`` and ``workspace``; never ``main`` or ``executor`` (it starts executors as
processes and speaks to them over ``wire._pipe``).
"""

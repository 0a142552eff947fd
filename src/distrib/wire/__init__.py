"""The wire protocol: messages, their codec, the ZeroMQ transport, and the pipe between a
worker daemon and its executors.

Imports nothing of the package above it but the shared utilities.
"""

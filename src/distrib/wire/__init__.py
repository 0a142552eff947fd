"""The wire protocol: messages, their codec, and the ZeroMQ transport.

Imports nothing of the package above it except the error tree.
"""

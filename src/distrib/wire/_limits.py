"""Every size limit of the protocol, the executor pipe and the workspace, in one place.

How they fit: a message header (msgpack) never passes ``MAX_HEADER_BYTES``. Small payloads
travel inside the header (``INLINE_MAX`` per task or result, all its pieces together), and
batches of tasks, results and blobs are cut by count *and* by bytes (``BATCH_BYTES``), so a
batch of small payloads stays well under the header limit whatever the sizes. Larger payloads
are frames of their own, each at most ``MAX_MESSAGE_BYTES`` (libzmq drops a peer that sends a
bigger one: on a keyed link it counts the frame as encrypted, ``FRAME_OVERHEAD`` bytes more, so
pieces stay that much under the limit, and under ``PIECE_BYTES`` too).
Texts a remote side chooses (error messages, tracebacks, output) are capped or
cut into pieces before they enter a header.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

# --- ZeroMQ messages -------------------------------------------------------------------------

MAX_HEADER_BYTES = 8 << 20  # a message's msgpack header; larger ones are malformed
MAX_MESSAGE_BYTES = int(os.environ.get("DISTRIB_MAX_MESSAGE_MB", "512")) << 20  # any one frame
# ZMQ_MAXMSGSIZE counts a frame as it is on the wire; CURVE adds 33 bytes to each (libzmq
# 4.3: command name, nonce, flags, MAC), so a piece as large as the limit closed keyed links.
FRAME_OVERHEAD = 1 << 10
# The largest piece of a payload on any link. libzmq delivers a message only once all of it
# is in, and a sender's heartbeats wait behind it: each piece of a large payload goes as a
# message of its own (``wire/_carry.py``) and counts as hearing from its sender, so a piece
# must arrive well within ``lost_after`` (10 s) on a slow link: 1 MiB takes 8 s at 1 Mbit/s
# (64 MiB needed 54 Mbit/s). Smaller pieces cost nothing measurable on loopback, with keys or
# without; and libzmq's CURVE copies a frame while it encrypts or decrypts it (in its I/O
# thread, one frame at a time), which small pieces keep short.
PIECE_BYTES = 1 << 20
# Carry messages ahead of one message (``wire/_carry.py``), each at most a piece, every two
# in a row more than one: so any link carries a payload of ``MAX_PAYLOAD_BYTES`` (511 GiB, in
# pieces of 1 MiB less the overhead); a larger one fails its own call.
MAX_CARRIED = 1 << 20
MAX_PAYLOAD_BYTES = (MAX_CARRIED // 2 - 1) * ((1 << 20) - FRAME_OVERHEAD)
INLINE_MAX = 256 << 10  # a payload (all pieces) below this travels inside the header
# inline bytes (and record texts) per Submit or Results header; well under both limits
BATCH_BYTES = min(4 << 20, MAX_MESSAGE_BYTES // 4)
BATCH_COUNT = 512  # tasks per Submit, results per Results
BLOB_BATCH_BYTES = 64 << 20  # compressed blob bytes per Blobs message
ROUTER_RCVHWM = 16  # messages from one Main buffered in the worker's socket before it reads
# Messages to one Main that wait in the worker's socket, beyond what the connection took
# (pieces of at most a MiB, and headers of at most BATCH_BYTES and their records; typically a
# few MiB): past them the worker keeps that Main's messages itself, and holds its tasks when
# they grow (``worker/_backlog.py``), so a Main that stops reading fills neither the worker's
# memory nor other Mains' time.
SNDHWM_BOUNDED = 32
MAX_OBJECTS = 256  # shared objects one task passes, or one Objects message carries
NEED_BLOBS_COUNT = 10_000  # hashes per NeedBlobs (~700 KB of header)
RECORD_TEXT_MAX = 64 << 10  # characters of an error's message, and of its traceback
OUTPUT_CHUNK = 256 << 10  # characters of task output per Output message (<= 1 MiB UTF-8)

# --- the executor pipe -----------------------------------------------------------------------

PIPE_MAX_FRAMES = 1 << 16
PIPE_MAX_HEADER = 64 << 20
PIPE_MAX_PLATFORMS = 64  # platforms one call made in a task may name
PIPE_MAX_OUTPUTS = 256  # and output globs

# --- workspaces ------------------------------------------------------------------------------

MAX_FILE_BYTES = 256 << 20
MAX_TOTAL_BYTES = 2 << 30
MAX_FILES = 100_000
MAX_PATH_CHARS = 4096  # of one path in a manifest
MAX_PATH_DEPTH = 128  # folders in one path


def piece_bytes(max_frame: int) -> int:
    """The largest piece of a payload frame sent to a receiver whose limit is ``max_frame``
    (its ``ZMQ_MAXMSGSIZE``)."""
    # (A peer that states less than 1 MiB, which no setting gives, still gets 1 MiB pieces:
    # pieces of a few bytes would make a payload millions of frames.)
    return min(max(max_frame, 1 << 20) - FRAME_OVERHEAD, PIECE_BYTES)


def batches(items: Iterable[T], size: Callable[[T], int], max_bytes: int = BATCH_BYTES,
            max_count: int = BATCH_COUNT) -> Iterator[list[T]]:
    """Cut ``items`` into lists of at most ``max_count`` items and ``max_bytes`` of ``size``.

    An item larger than ``max_bytes`` on its own makes a batch of one (its caller keeps such
    items out of headers, so a batch never passes the header limit).
    """
    batch: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if batch and (len(batch) >= max_count or total + n > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += n
    if batch:
        yield batch


def cap_text(text: str, limit: int = RECORD_TEXT_MAX, keep_end: bool = False) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    note = f"\n[... {cut} characters cut by distrib ...]\n"
    return note + text[-limit:] if keep_end else text[:limit] + note

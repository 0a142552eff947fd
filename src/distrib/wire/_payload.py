"""A payload's pieces on the wire: split into a header's inline part and frames of their own,
joined back from a Submit's or Results' frames, and blobs packed into ``Blobs`` batches.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from distrib.wire import _messages as m
from distrib.wire._limits import BLOB_BATCH_BYTES, INLINE_MAX



class _Spec(Protocol):
    @property
    def inline(self) -> list[bytes]: ...

    @property
    def nframes(self) -> int: ...


Spec = TypeVar("Spec", bound=_Spec)  # a TaskSpec or a ResultSpec


def split_payload(frames: list[Any]) -> tuple[list[bytes], list[Any]]:
    """(inline pieces, separate frames) for a payload: inline when all of it is small."""
    if m.payload_size(frames) < INLINE_MAX:
        return [bytes(f) for f in frames], []
    return [], frames


def join_payloads(specs: Iterable[Spec],
                  frames: Sequence[Any]) -> Iterator[tuple[Spec, list[Any]]]:
    """Each spec of a Submit or Results with its payload: its ``inline`` pieces, then its
    ``nframes`` frames of the message's ``frames``, in order."""
    at = 0
    for spec in specs:
        yield spec, [*spec.inline, *frames[at:at + spec.nframes]]
        at += spec.nframes


def blob_batches(dist: str, hashes: Iterable[str], read: Callable[[str], bytes | str],
                 level: int = 1) -> Iterator[m.Blobs | m.DistFailed]:
    """The messages answering a NeedBlobs of ``dist``: Blobs of at most ``BLOB_BATCH_BYTES``
    (compressed, at zlib ``level``: 0 stores them as they are, still a zlib stream, as
    ``_pack`` does with a blob that hardly compresses), or a DistFailed where ``read`` gives
    the reason a blob cannot be sent instead of its bytes (after which nothing more is
    sent)."""
    batch: list[str] = []
    packed: list[bytes] = []
    size = 0
    for digest in hashes:
        data = read(digest)
        if isinstance(data, str):
            yield m.DistFailed(dist, data)
            return
        batch.append(digest)
        packed.append(_pack(data, level))
        size += len(packed[-1])
        if size >= BLOB_BATCH_BYTES:
            yield m.Blobs(dist, batch, frames=tuple(packed))
            batch, packed, size = [], [], 0
    if batch:
        yield m.Blobs(dist, batch, frames=tuple(packed))


_SAMPLE = 64 << 10


def _pack(data: bytes, level: int) -> bytes:
    """A blob in zlib's format: compressed at ``level``, or stored (level 0: a copy) when its
    first 64 KiB hardly compress, as random or already compressed data (float arrays,
    archives, images) do: compressing them gained nothing at about 30 MB/s of the sender's
    CPU."""
    if level and len(data) > _SAMPLE and len(zlib.compress(data[:_SAMPLE], 1)) > 0.9 * _SAMPLE:
        level = 0
    return zlib.compress(data, level)

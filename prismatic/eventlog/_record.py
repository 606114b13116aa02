"""Event log data model and its on-disk byte layout.

Records are msgpack arrays tagged with their format version (a tagged union, so a future
``EventRecordV2`` with ``tag=2`` can be added next to :class:`EventRecord` and both decoded).
Version 1, stored as the value of the ``events`` DB under key ``seq`` (u64 big-endian)::

    [1, seq, wall_ns, mono_ns, node, source, topic, correlation_id, payload, crc32]

``seq`` is always written as a msgpack uint64 (``0xcf`` + 8 bytes), which lets the writer
thread splice the seq into a body pre-encoded by the emitting thread: the value is
``RECORD_HEAD + seq_be + body + 0xce + crc32_be`` where ``body`` is the encoding of the seven
fields from ``wall_ns`` to ``payload`` without an array header, and ``crc32`` (a msgpack
uint32) is ``zlib.crc32(body)``: damage to a record's bytes is found by ``verify`` even where
it still decodes (the key already pins the seq). Records written before the checksum are the
same array without it (9 elements, ``0x99``); both are read alike, because msgspec ignores
trailing elements of an ``array_like`` struct -- which is also why older code reads records
with a checksum and ``FORMAT_VERSION`` stays 1. Index layouts (all keys sort bytewise):

* ``by_time``:   ``wall_ns_be + first_seq_be`` -> ``last_seq_be``; one entry per submit call,
  whose records share one ``wall_ns`` and have contiguous seqs.
* ``by_topic``/``by_source``: ``name_utf8 + NUL + first_seq_be`` -> posting list
  ``base_seq_be + u32le offsets`` (ascending) of that call's records with that name.
"""

from __future__ import annotations

import array
import struct
import sys
import zlib
from typing import Any

import msgspec

__all__ = [
    "FORMAT_VERSION",
    "EventDraft",
    "RawEventRecord",
    "EventRecord",
    "EventLogStats",
]

# Bumped when a change cannot be read by older code; the meta DB records it per log.
FORMAT_VERSION = 1
MAGIC = b"prismatic.eventlog"

RECORD_HEAD = b"\x9a\x01\xcf"  # fixarray(10), tag 1, uint64 marker for seq
_CHECKSUM = struct.Struct(">BI")  # msgpack uint32 marker 0xce, crc32


def seal_body(body: bytes) -> bytes:
    """``body`` (see the module docstring) followed by its checksum field."""
    return body + _CHECKSUM.pack(0xCE, zlib.crc32(body))


def checksum_ok(value: bytes) -> bool | None:
    """Whether a stored record's bytes match its checksum; None if it has none (written
    before records carried one)."""
    if value[:1] == b"\x99":
        return None
    if value[:3] != RECORD_HEAD or len(value) < 16 or value[-5] != 0xCE:
        return False
    return zlib.crc32(value[11:-5]) == _CHECKSUM.unpack_from(value, len(value) - 5)[1]
_U64 = struct.Struct(">Q")
pack_u64 = _U64.pack
unpack_u64 = _U64.unpack
NUL = b"\x00"
SINGLE_OFFSET = array.array("I", [0]).tobytes()


class EventDraft(msgspec.Struct, frozen=True):
    """An event to append: the fields the emitter chooses (the log assigns the rest)."""

    topic: str
    payload: Any
    source: str
    correlation_id: str | None = None


class RecordHead(msgspec.Struct, frozen=True, array_like=True, tag=1, gc=False):
    """The leading fields of a v1 record; decoding it skips building the payload.

    Invariants: ``seq`` is unique per log, starts at 1 and is never reused; ``wall_ns`` /
    ``mono_ns`` are ``time.time_ns()`` / ``time.monotonic_ns()`` taken when the event was
    submitted (the same for every record of one ``submit_many`` call).
    """

    seq: int
    wall_ns: int
    mono_ns: int
    node: str
    source: str
    topic: str


class EventRecord(RecordHead, frozen=True, array_like=True, tag=1, gc=False):
    """One durable event, format version 1: the head, then these fields."""

    correlation_id: str | None
    payload: Any


class RawEventRecord(RecordHead, frozen=True, array_like=True, tag=1, gc=False):
    """A v1 record whose payload stays encoded (``msgspec.msgpack.decode(r.payload)`` when
    needed): what ``replay(..., raw_payloads=True)`` yields, about twice as fast to read."""

    correlation_id: str | None
    payload: msgspec.Raw


class EventLogStats(msgspec.Struct, frozen=True):
    """A snapshot of an event log's position, size and counters (for metrics export)."""

    path: str
    node: str
    readonly: bool
    first_seq: int | None
    last_seq: int
    records: int
    used_bytes: int
    map_size: int
    appends: int
    commits: int
    bytes_written: int
    errors: int
    full_errors: int
    retention_deleted: int
    map_growths: int
    queued: int


def encode_posting(base_seq: int, offsets: bytes) -> bytes:
    """Posting value for records ``base_seq + o`` for each u32 offset in ``offsets``."""
    return pack_u64(base_seq) + offsets


def offsets_bytes(offsets: list[int]) -> bytes:
    """Little-endian u32 array bytes, whatever the host byte order."""
    packed = array.array("I", offsets)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def decode_posting(value: bytes) -> list[int]:
    """The ascending seqs of a posting value."""
    base = unpack_u64(value[:8])[0]
    offsets = array.array("I")
    offsets.frombytes(value[8:])
    if sys.byteorder == "big":
        offsets.byteswap()
    return [base + o for o in offsets]


def posting_last_seq(value: bytes) -> int:
    """The largest seq in a posting value, without decoding the whole list."""
    return unpack_u64(value[:8])[0] + int.from_bytes(value[-4:], "little")

"""Cutting a pipe's bytes into messages of whole records, and counting records, without a walk.

A record is `[u32 LE length][JSON object]`. JSON text holds no raw NUL byte, so in a stream of
records the three bytes `00 00 7B` ("\\0\\0{") occur exactly where a header of a record shorter
than 64 KiB ends and its object begins: two zero high bytes of the length, then "{". (The
length's other bytes cannot take that shape below 8 MiB.) bytes.count and bytes.rfind find them
in C: counting a message's records and finding a cut point cost no Python step per record. A
record of 64 KiB or more (no trade is near that) travels whole, inside the message of the record
before it, and is counted with that one. Only the end of the data is walked header by header,
to tell a complete last record from one still arriving.
"""

from __future__ import annotations

import struct

__all__ = ["MARK", "complete_end", "count_records", "cut_messages"]

MARK = b"\0\0{"  # the end of a short record's header and the start of its object
_HEADER = struct.Struct("<I")


def count_records(data: bytes) -> int:
    """The records in `data` (whole records, each under 64 KiB; see the module docstring)."""
    return data.count(MARK)


def complete_end(data: bytes) -> int:
    """The end of the last complete record in `data` (which starts on a record boundary)."""
    end = len(data)
    pos = data.rfind(MARK) - 2  # the last record start the scan can see (-3: none)
    if pos < 0:
        pos = 0
    unpack = _HEADER.unpack_from
    while pos + 4 <= end:
        stop = pos + 4 + unpack(data, pos)[0]
        if stop > end:
            break
        pos = stop
    return pos


def cut_messages(data: bytes, size: int) -> list[bytes]:
    """Split `data` (whole records) into messages of whole records of at most `size` bytes each,
    unless one record alone is bigger."""
    if len(data) <= size:
        return [data]
    out = []
    start, end = 0, len(data)
    while end - start > size:
        # the last record start in (start, start + size]: its header ends 2 bytes before MARK
        k = data.rfind(MARK, start + 3, start + size + 5)
        # (every MARK is a record start; none in range: the record at `start` is that long)
        cut = k - 2 if k >= 0 else start + 4 + _HEADER.unpack_from(data, start)[0]
        out.append(data[start:cut])
        start = cut
    if start < end:
        out.append(data[start:])
    return out

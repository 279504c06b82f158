"""The tb.gap record: what a worker is told about a window of the feed that tb did not see.

With `tb run --gap-records`, when streaming resumes after a reconnect tb writes to every pipe,
before the new connection's first event, one record in the ordinary pipe format:

    {"ev":"tb.gap","from":MS,"to":MS,"reason":"..."}

`from` is the wall-clock time (Unix ms) of the last data received before the drop, `to` the time
streaming resumed (the new subscription's success, or the new connection's first data if that
came first), `reason` the logged cause of the drop. Trades between the two were never seen by tb:
a worker that backfills (REST) knows exactly which window to ask for, per pipe, in order.
"""

from __future__ import annotations

import json
import struct

__all__ = ["GAP_EVENT", "encode_gap", "is_gap"]

GAP_EVENT = "tb.gap"


def encode_gap(start_ms: int, end_ms: int, reason: str) -> bytes:
    """One framed record ([u32 LE length][JSON]) for the window start_ms..end_ms."""
    body = json.dumps(
        {"ev": GAP_EVENT, "from": start_ms, "to": end_ms, "reason": reason},
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()
    return struct.pack("<I", len(body)) + body


def is_gap(record: bytes | memoryview) -> bool:
    """Whether a record (its JSON, without the length) is a tb.gap record."""
    return bytes(record[:18]) == b'{"ev":"tb.gap","fr'

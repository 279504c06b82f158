"""What `tb replay` serves: every message of a capture, encoded once as server frames.

Theory of operation: at start-up every message (websocket payload) is encoded once into ONE
bytes buffer of unmasked TEXT frames, shared read-only by every connection: `ends[k]` is the
offset just past frame k and `trades[k]` the trades in frames 0..k. A connection streams slices
of the buffer cut at frame boundaries (`boundary_at_or_after`, a binary search over `ends`), so
the per-byte cost of serving is the kernel's copy; pacing by trades is a binary search over
`trades`. `count_trades` counts the events that are not statuses, decoding JSON only when a
message has a status in it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from tb.ws import Opcode, encode_frame

__all__ = ["FrameStream", "count_trades"]


def count_trades(payload: bytes) -> int:
    """Non-status events in one message. Counts ``"ev"`` keys; decodes only if a status is there."""
    n = payload.count(b'"ev"')
    if n and b'"status"' in payload:
        try:
            value = json.loads(payload)
        except ValueError:
            return n
        if isinstance(value, dict):
            value = [value]
        if isinstance(value, list):
            return sum(1 for v in value if isinstance(v, dict) and v.get("ev") != "status")
    return n


class FrameStream:
    """Every message pre-encoded as server TEXT frames in one buffer, with frame/trade offsets."""

    def __init__(self, payloads: Iterable[bytes]) -> None:
        # Appended frame by frame (amortized growth) rather than joined from a list, so the
        # peak is about one copy of the stream even for multi-GB captures.
        buffer = bytearray()
        ends: list[int] = []
        trades: list[int] = []
        total = 0
        for payload in payloads:
            buffer += encode_frame(Opcode.TEXT, payload, mask=False)
            total += count_trades(payload)
            ends.append(len(buffer))
            trades.append(total)
        self.buffer = buffer  # never resized again: the memoryview below pins it
        self.view = memoryview(buffer)
        self.ends = np.array(ends, dtype=np.int64)
        self.trades = np.array(trades, dtype=np.int64)
        self.messages = len(ends)
        self.total_trades = total

    def boundary_at_or_after(self, pos: int) -> int:
        """Index of the frame that ends at or after byte ``pos``."""
        return int(np.searchsorted(self.ends, pos, side="left"))

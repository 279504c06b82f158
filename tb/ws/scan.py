"""Batch frame scanning: the spans of every plain data frame at the start of a receive buffer.

Theory of operation. Nearly every frame a feed sends is a final, unmasked TEXT frame (with a 7-,
16- or, for messages of 64 KiB or more, 64-bit length). `scan_data_frames` finds the payload
spans of the longest run of such frames at the start of `a[pos:end]` and stops at the first
frame that is anything else (a control frame, a fragment, a masked or oversized frame, a 64-bit
length with its top bit set, or one not yet complete): the caller hands the rest to
`Connection.receive`, which knows the whole protocol. No payload is copied.

Two strategies, same result (tests/ws/test_scan.py pins them against Connection.receive):
- big frames (a burst's ~40 KB messages): a short Python loop over the headers;
- small frames (1-5 trades, ~100-600 bytes): vectorized. Candidate frame starts are the bytes
  0x81/0x82; in ASCII JSON payloads they occur only as frame starts or inside a 16-bit length.
  Each candidate's header gives its successor; the frames are the chain of successors from the
  first frame, which skips the stray candidates (followed in runs of consecutive candidates, so
  the Python work is per stray candidate, not per frame).

`utf8_errors` checks text payloads where the router's ASCII test could not (it is only needed
for messages with bytes >= 0x80).
"""

from __future__ import annotations

import struct
from codecs import utf_8_decode

import numpy as np

from ..bytefind import find_all

__all__ = ["scan_data_frames", "text_frames", "utf8_errors", "as_list", "SMALL_FRAME"]

SMALL_FRAME = 2048  # mean payload size below which the vectorized strategy pays (measured)
_FRAME_HEAD = struct.Struct(">BBH").unpack_from  # first byte, length byte, a 16-bit length
_PROBE = 16  # frames scanned in Python before choosing a strategy
# ... and it pays only for this many frames or more: its fixed cost is ~140 us, the Python loop's
# ~0.9 us per frame against its ~0.25 (measured: 30 frames of quiet trades took 145 us
# vectorized, ~27 us in Python)
VECTOR_MIN_FRAMES = 200


def scan_data_frames(
    a: np.ndarray,
    view: memoryview,
    pos: int,
    end: int,
    max_message: int,
    mask: np.ndarray | None = None,
):
    """Spans of the plain data frames at the start of a[pos:end].

    `a` and `view` are the same buffer (a uint8 array, a memoryview), with at least 4 bytes of
    slack after `end`. Returns (payload starts, payload ends, opcodes, where scanning stopped):
    int64/uint8 arrays when many small frames were scanned vectorized, else lists. `mask`, a
    bool array of at least end - pos + 63 elements (tb.bytefind), is scratch space reused
    across calls (a fresh multi-MB temporary costs page faults every time).
    """
    starts: list[int] = []
    ends: list[int] = []
    ops: list[int] = []
    p, more = _scan_python(view, starts, ends, ops, pos, end, max_message, _PROBE)
    probed = p - pos  # bytes of the first _PROBE frames
    if more and probed < SMALL_FRAME * _PROBE and (end - p) * _PROBE >= VECTOR_MIN_FRAMES * probed:
        vs, ve, vo, stop = _scan_vectorized(a, p, end, max_message, mask)
        return (
            np.concatenate((np.array(starts, dtype=np.int64), vs)),
            np.concatenate((np.array(ends, dtype=np.int64), ve)),
            np.concatenate((np.array(ops, dtype=np.uint8), vo)),
            stop,
        )  # arrays: the vectorized strategy's caller has many frames
    if more:
        p, _ = _scan_python(view, starts, ends, ops, p, end, max_message, None)
    # Plain lists from the Python strategy: a few frames are cheaper to hand on as lists than
    # as arrays (callers take either: len, indexing, iteration).
    return starts, ends, ops, p


def text_frames(view: memoryview, pos: int, end: int, max_message: int) -> list | None:
    """The payloads (views of `view`) if view[pos:end] is exactly a run of whole, final, unmasked
    TEXT frames with 7- or 16-bit lengths, else None: a trickle's usual receive (one frame, or a
    few), as scan_data_frames would find it, in fewer steps (no spans, no opcodes)."""
    payloads = []
    while True:
        size = end - pos
        if size < 4:  # (a last frame of 2-3 bytes: too short for one struct call)
            if size < 2 or view[pos] != 0x81 or view[pos + 1] != size - 2 or size - 2 > max_message:
                return None
            payloads.append(view[pos + 2 : end])
            return payloads
        b0, b1, n = _FRAME_HEAD(view, pos)  # (one call for the three header fields)
        if b0 != 0x81:
            return None
        if b1 < 126:
            n = b1
            pos += 2
        elif b1 == 126:
            pos += 4
        else:  # (64-bit lengths, masked frames: scan_data_frames and the Connection)
            return None
        at = pos + n
        if at > end or n > max_message:
            return None
        payloads.append(view[pos:at])
        if at == end:
            return payloads
        pos = at


def _scan_python(
    view: memoryview, starts, ends, ops, p: int, end: int, max_message: int, limit: int | None
) -> tuple[int, bool]:
    """Scan frame headers from p, appending spans; stop after `limit` frames (None: no limit).

    Returns (where it stopped, whether it stopped only because of the limit)."""
    count = 0
    while p + 2 <= end:
        if count == limit:
            return p, True
        b0 = view[p]
        b1 = view[p + 1]
        if (b0 != 0x81 and b0 != 0x82) or b1 > 127:
            break
        if b1 == 126:
            s = p + 4
            if s > end:
                break
            e = s + ((view[p + 2] << 8) | view[p + 3])
        elif b1 == 127:  # (a top bit set makes it too long: Connection.receive rejects it)
            s = p + 10
            if s > end:
                break
            e = s + int.from_bytes(view[p + 2 : s], "big")
        else:
            s = p + 2
            e = s + b1
        if e > end or e - s > max_message:
            break
        starts.append(s)
        ends.append(e)
        ops.append(b0 & 0x0F)
        p = e
        count += 1
    return p, False


def _scan_vectorized(a: np.ndarray, pos: int, end: int, max_message: int, mask=None):
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8), pos)
    seg = a[pos:end]
    # Candidates: 0x81 (a final TEXT frame) -- one compare pass. A BINARY frame (0x82) is not a
    # candidate, so the chain stops before it and Connection.receive takes it (pinned by
    # test_scan.py).
    cand = find_all(seg, 0x81, mask) + pos
    if not len(cand) or cand[0] != pos:
        return empty
    b1 = a[cand + 1].astype(np.int64)
    ext = (a[cand + 2].astype(np.int64) << 8) | a[cand + 3]
    short = b1 < 126
    hl = np.where(short, 2, 4)
    length = np.where(short, b1, ext)
    huge = np.flatnonzero(b1 == 127)
    if len(huge):  # 64-bit lengths (capped: a top bit set is too long, as is past the limit)
        at = np.minimum(cand[huge] + 2, len(a) - 8)  # (past `end`: unusable, whatever it reads)
        word = np.ndarray((len(a) - 7,), ">u8", buffer=a, strides=(1,))[at]
        length[huge] = np.minimum(word, max_message + 1)
        hl[huge] = 10
    nxt = cand + hl + length
    # a frame is usable when its header is whole, it is complete, plain and within the limit
    usable = (b1 <= 127) & (cand + hl <= end) & (nxt <= end) & (length <= max_message)
    j = np.searchsorted(cand, nxt)
    jc = np.minimum(j, len(cand) - 1)
    linked = usable & (j < len(cand)) & (cand[jc] == nxt)
    step = linked & (j == np.arange(len(cand)) + 1)
    breaks = np.flatnonzero(~step)  # where a run of consecutive frames ends
    nodes: list[np.ndarray] = []
    i = 0
    stop = pos
    while True:
        if not usable[i]:
            stop = int(cand[i])
            break
        k = int(breaks[np.searchsorted(breaks, i)])  # the last node of this run
        nodes.append(np.arange(i, k + 1))
        if not linked[k]:
            # the successor is not a plain data frame (or the buffer ends): stop after k ...
            if not usable[k]:  # ... unless k itself is not usable
                nodes[-1] = nodes[-1][:-1]
                stop = int(cand[k])
            else:
                stop = int(nxt[k])
            break
        i = int(j[k])  # skip stray candidates inside the next frame's header
    idx = np.concatenate(nodes) if nodes else np.empty(0, np.int64)
    return cand[idx] + hl[idx], nxt[idx], (a[cand[idx]] & 0x0F).astype(np.uint8), stop


def as_list(x) -> list:
    """The spans as a list, whichever form scan_data_frames returned them in."""
    return x.tolist() if isinstance(x, np.ndarray) else x


def utf8_errors(view: memoryview, starts, ends, ops) -> tuple[int, str]:
    """(index, decoder error) of the first text payload that is not UTF-8, else (-1, '')."""
    for i, (s, e, op) in enumerate(zip(as_list(starts), as_list(ends), as_list(ops), strict=True)):
        if op == 1:
            try:
                utf_8_decode(view[s:e], "strict", True)
            except UnicodeDecodeError as exc:
                return i, str(exc)
    return -1, ""

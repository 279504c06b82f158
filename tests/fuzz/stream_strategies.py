"""Hypothesis strategies for websocket streams: valid ones with their expected messages, and
mutations of them (bytes flipped, inserted, deleted, truncated)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from tb.ws import CloseCode

# sizes around every boundary the parsers have: 7/16/64-bit lengths, 0x81/0x82 length bytes
SIZES = st.one_of(
    st.sampled_from([0, 1, 2, 124, 125, 126, 127, 129, 130, 0x17D, 0x181, 0x182]),
    st.integers(0, 600),
)
CLOSE_CODES = st.sampled_from([1000, 1001, 1003, 1011, 3000, 4999, int(CloseCode.NORMAL)])


def header(b0: int, n: int, mask: bytes | None, form: int) -> bytes:
    """A frame header; form 0 minimal, 1 16-bit, 2 64-bit length (where the size allows)."""
    mbit = 0x80 if mask is not None else 0
    if form == 2 or n >= 65536:
        head = bytes((b0, mbit | 127)) + n.to_bytes(8, "big")
    elif form == 1 or n >= 126:
        head = bytes((b0, mbit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, mbit | n))
    return head + (mask or b"")


def frame(b0: int, payload: bytes, mask: bytes | None, form: int = 0) -> bytes:
    if mask is None:
        body = payload
    else:
        keys = np.resize(np.frombuffer(mask, np.uint8), len(payload))
        body = (np.frombuffer(payload, np.uint8) ^ keys).tobytes()
    return header(b0, len(payload), mask, form if b0 & 0x0F < 8 else 0) + body


@st.composite
def payloads(draw, text: bool, feed: bool = False, shaped: bool = False) -> bytes:
    n = draw(SIZES) if draw(st.integers(0, 24)) else draw(st.sampled_from([0x8181, 65535, 65536]))
    if text:
        kind = 0 if shaped else draw(st.integers(0, 9 if feed else 3))  # a feed: mostly shaped
        kind = 0 if kind > 3 else kind
        if kind == 0:  # feed-shaped ASCII, ending "}]" as feed messages do (route_frames)
            return (b"[{" + b"x" * max(0, n - 4) + b"}]")[-n:] if n >= 4 else b"[]"[:n]
        if kind == 1:  # UTF-8 with 0x81/0x82 continuation bytes ("\u0441\u0442" = d1 81 d1 82)
            return ("\u0441\u0442" * (n // 4 + 1)).encode()[: n - n % 2]
        return draw(st.text(max_size=40)).encode()
    return draw(st.one_of(st.just(b"\x81\x82" * (n // 2)), st.binary(max_size=60)))


@st.composite
def streams(draw, client: bool, feed: bool = False) -> tuple[bytes, list[bytes]]:
    """(bytes a peer sends to a Connection(client=client), the data messages it must yield).

    feed=True: mostly unfragmented TEXT frames, as the market feed sends them, with now and
    then a control frame, a fragmented message or a non-minimal length.
    """
    out, messages = bytearray(), []
    rng_mask = st.binary(min_size=4, max_size=4)
    mask = (lambda: None) if client else (lambda: draw(rng_mask))
    count = draw(st.integers(0, 40 if feed else 8))
    pure = feed and draw(st.integers(0, 2)) == 0  # only feed-shaped text frames, but at the end
    for i in range(count):
        kind = draw(st.integers(0, 30 if feed else 6))
        if kind >= 6 or (pure and i < count - 1):
            kind = 0
        if kind in (0, 1):  # a data message in one frame
            text = kind == 0 or draw(st.integers(0, 9)) == 0
            p = draw(payloads(text, feed)) if not pure else draw(payloads(True, True, shaped=True))
            form = 0 if draw(st.integers(0, 7)) else draw(st.integers(1, 2))
            out += frame(0x81 if text else 0x82, p, mask(), form)
            messages.append(p)
        elif kind == 2:  # fragmented, control frames in between
            text = draw(st.booleans())
            p = draw(payloads(text))
            cuts = sorted(draw(st.lists(st.integers(0, len(p)), min_size=1, max_size=3)))
            parts = [p[a:b] for a, b in zip([0, *cuts], [*cuts, len(p)], strict=True)]
            for i, part in enumerate(parts):
                op = (1 if text else 2) if i == 0 else 0
                fin = 0x80 if i == len(parts) - 1 else 0
                out += frame(fin | op, part, mask(), draw(st.integers(0, 2)))
                if draw(st.integers(0, 3)) == 0 and not fin:
                    out += frame(0x89, b"mid", mask())
            messages.append(p)
        elif kind in (3, 4):  # ping / pong
            out += frame(0x89 if kind == 3 else 0x8A, draw(st.binary(max_size=125)), mask())
        else:  # an empty data frame
            out += frame(0x82, b"", mask())
            messages.append(b"")
    if draw(st.integers(0, 4)) == 0:
        reason = draw(st.text(max_size=20)).encode()[:123]
        out += frame(0x88, draw(CLOSE_CODES).to_bytes(2, "big") + reason, mask())
    return bytes(out), messages


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """`data` with a few bytes changed, inserted or deleted, or cut short."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(buf)))
        op = draw(st.integers(0, 3))
        byte = draw(st.sampled_from([0x00, 0x7E, 0x7F, 0x80, 0x81, 0x82, 0x88, 0x89, 0xFF]))
        if op == 0 and at < len(buf):
            buf[at] = byte
        elif op == 1:
            buf.insert(at, byte)
        elif op == 2 and at < len(buf):
            del buf[at]
        else:
            del buf[at:]
    return bytes(buf)


@st.composite
def two_piece_or_random_splits(draw, n: int) -> list[list[int]]:
    """Every two-piece split for short streams, a few random multi-piece ones otherwise."""
    plans = [[k] for k in range(n + 1)] if n <= 160 else []
    plans += draw(st.lists(st.lists(st.integers(0, n), max_size=5).map(sorted), max_size=4))
    return plans

"""scan_data_frames finds exactly the frames Connection.receive would deliver, then stops."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tb.ws import Connection, Opcode, ProtocolError, encode_frame
from tb.ws.scan import scan_data_frames, text_frames


def payload(rng: random.Random, n: int) -> bytes:
    return b"[" + b"x" * max(0, n - 2) + b"]" if n >= 2 else b"x" * n


def stream(rng: random.Random, sizes: list[int], extras: bool) -> bytes:
    out = bytearray()
    for i, n in enumerate(sizes):
        op = Opcode.BINARY if rng.random() < 0.1 else Opcode.TEXT
        out += encode_frame(op, payload(rng, n), mask=False)
        if extras and i == len(sizes) // 2:
            out += encode_frame(Opcode.PING, b"hi", mask=False)
    return bytes(out)


def via_scan(data: bytes, max_message: int = 1 << 20):
    """Messages as the balancer gets them: scanned spans, then Connection.receive for the rest."""
    buf = bytearray(data) + bytes(16)
    a = np.frombuffer(buf, np.uint8)
    view = memoryview(buf)
    starts, ends, ops, stop = scan_data_frames(a, view, 0, len(data), max_message)
    got = [bytes(view[s:e]) for s, e in zip(list(starts), list(ends), strict=True)]
    conn = Connection(max_message=max_message)
    used = conn.receive(view[stop : len(data)])
    got += [bytes(m) for m in conn.messages]
    return got, stop + used, conn


def via_connection(data: bytes, max_message: int = 1 << 20):
    conn = Connection(max_message=max_message)
    used = conn.receive(memoryview(data))
    return [bytes(m) for m in conn.messages], used, conn


def test_binary_frames_are_left_to_the_connection():
    # (enough small frames for the vectorized strategy, whose candidates are TEXT frames only)
    frames = [encode_frame(Opcode.TEXT, b"[" + b"t" * 40 + b"]", mask=False)] * 600
    frames[400] = encode_frame(Opcode.BINARY, b"[" + b"b" * 40 + b"]", mask=False)
    data = b"".join(frames)
    buf = bytearray(data) + bytes(16)
    starts, _, _, stop = scan_data_frames(
        np.frombuffer(buf, np.uint8), memoryview(buf), 0, len(data), 4096
    )
    assert isinstance(starts, np.ndarray)  # the vectorized strategy ran
    assert len(starts) == 400 and stop == 400 * len(frames[0])
    assert via_scan(data)[:2] == via_connection(data)[:2]


SIZES = [
    [5] * 40,  # 7-bit lengths
    [300] * 40,  # 16-bit lengths
    [129 + 256 * k for k in range(40)],  # low length byte 0x81: a stray candidate in each header
    [130, 385, 641, 2, 40000, 120, 33025, 33026, 126, 125],  # 0x81/0x82 in either length byte
    [40000] * 20,  # big frames: the Python strategy
    [3] * 16 + [500] * 30 + [70000] + [10] * 20,  # a 64-bit length
    [70000, 300000, 65536, 10],
    # enough small frames for the vectorized strategy (VECTOR_MIN_FRAMES):
    [5] * 400,
    [129 + 256 * (k % 40) for k in range(400)],  # stray candidates in the 16-bit lengths
    [3] * 16 + [500] * 300 + [70000] + [10] * 20,
]


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("extras", [False, True])
@pytest.mark.parametrize("cut", [0, 1, 3, 7])
def test_same_messages_as_connection(sizes, extras, cut):
    rng = random.Random(len(sizes) + cut)
    data = stream(rng, sizes, extras)
    data = data[: len(data) - cut]  # a partial last frame
    assert via_scan(data)[:2] == via_connection(data)[:2]


def frame64(payload: bytes, length: int | None = None) -> bytes:
    """A final TEXT frame with a 64-bit length, for any payload size (as RFC 6455 allows a
    receiver to accept; Connection.receive does)."""
    size = len(payload) if length is None else length
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


@pytest.mark.parametrize("small", [3, 600])
def test_64_bit_lengths_are_scanned(small):
    big = payload(None, 70000)
    frames = [encode_frame(Opcode.TEXT, payload(None, small), mask=False)] * 300
    frames[100] = encode_frame(Opcode.TEXT, big, mask=False)  # (after the probe: vectorized)
    frames[250] = frame64(b"[0x81 in a length]")  # a short payload, 64-bit encoded
    frames[251] = frame64(payload(None, 0x81 + 0x7F00))  # length bytes 0x7F, 0x81
    data = b"".join(frames)
    buf = bytearray(data) + bytes(16)
    starts, ends, _, stop = scan_data_frames(
        np.frombuffer(buf, np.uint8), memoryview(buf), 0, len(data), 1 << 20
    )
    assert isinstance(starts, np.ndarray) and stop == len(data) and len(starts) == 300
    assert bytes(buf[starts[100] : ends[100]]) == big
    assert bytes(buf[starts[250] : ends[250]]) == b"[0x81 in a length]"
    got, used, _ = via_scan(data)
    assert (got, used) == via_connection(data)[:2] and used == len(data)


@pytest.mark.parametrize("length", [1 << 63, (1 << 64) - 1, 5000])
def test_stops_before_a_64_bit_length_too_long(length):
    # a top bit set (the RFC forbids it) or past max_message: left to Connection.receive
    for lead in (1, 300):  # the Python strategy, the vectorized one
        data = b"".join([encode_frame(Opcode.TEXT, b"[1]", mask=False)] * lead)
        data += frame64(b"[2]" * 10, length) + encode_frame(Opcode.TEXT, b"[3]", mask=False)
        buf = bytearray(data) + bytes(16)
        starts, _, _, stop = scan_data_frames(
            np.frombuffer(buf, np.uint8), memoryview(buf), 0, len(data), 4096
        )
        assert len(starts) == lead and stop == 5 * lead
        with pytest.raises(ProtocolError):
            Connection(max_message=4096).receive(memoryview(data[stop:]))


def test_stops_before_an_oversized_frame():
    data = b"".join(
        encode_frame(Opcode.TEXT, payload(None, n), mask=False)
        for n in [10] * 20 + [5000] + [10] * 5
    )
    buf = bytearray(data) + bytes(16)
    starts, ends, ops, stop = scan_data_frames(
        np.frombuffer(buf, np.uint8), memoryview(buf), 0, len(data), 4096
    )
    assert len(starts) == 20  # the 5000-byte frame is left for Connection.receive (1009)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 70000), min_size=1, max_size=60), st.integers(0, 40))
def test_random_streams_and_splits(sizes, cut):
    rng = random.Random(sum(sizes))
    data = stream(rng, sizes, True)
    data = data[: max(0, len(data) - cut)]
    assert via_scan(data)[:2] == via_connection(data)[:2]


def _text_frames_by_scan(data: bytes, max_message: int) -> list[bytes] | None:
    """What scan_data_frames says of `data` as a receive of whole text frames with 7- or 16-bit
    lengths: their payloads, or None."""
    buf = bytearray(data) + bytes(16)
    starts, ends, ops, stop = scan_data_frames(
        np.frombuffer(buf, np.uint8), memoryview(buf), 0, len(data), max_message
    )
    if not len(starts) or stop != len(data) or any(op != Opcode.TEXT for op in ops):
        return None
    prev = 0
    for s, e in zip(starts, ends, strict=True):
        if s - prev > 4:  # (a 64-bit length)
            return None
        prev = e
    return [bytes(data[s:e]) for s, e in zip(starts, ends, strict=True)]


@pytest.mark.parametrize("n", [0, 1, 2, 124, 125, 126, 127, 300, 65535, 65536])
@pytest.mark.parametrize(
    "kind",
    ["text", "binary", "masked", "fragment", "two", "three", "cut", "trailing ping", "text+binary"],
)
def test_text_frames_agrees_with_the_scan(n, kind):
    body = payload(random.Random(n), n)
    frame = encode_frame(
        Opcode.BINARY if kind == "binary" else Opcode.TEXT,
        body,
        mask=kind == "masked",
        fin=kind != "fragment",
    )
    small = encode_frame(Opcode.TEXT, b"[1]", mask=False)
    data = {
        "two": frame + frame,
        "three": small + frame + encode_frame(Opcode.TEXT, b"", mask=False),
        "cut": frame[:-1],
        "trailing ping": frame + encode_frame(Opcode.PING, b"", mask=False),
        "text+binary": frame + encode_frame(Opcode.BINARY, b"[]", mask=False),
    }.get(kind, frame)
    for max_message in (1 << 20, 125):
        # (with nothing after the data, and with a header's worth of other bytes after it)
        for view in (memoryview(data), memoryview(bytearray(data) + b"\x81\x7e\x00\x00")):
            got = text_frames(view, 0, len(data), max_message)
            # (64-bit lengths: the scan's, not text_frames')
            want = _text_frames_by_scan(data, max_message) if n < 65536 else None
            assert (got if got is None else [bytes(p) for p in got]) == want, (kind, n, max_message)
        if kind == "text" and n < 65536 and n <= max_message:
            assert got is not None and len(got) == 1 and bytes(got[0]) == body

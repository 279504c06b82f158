"""Frame encoding: length forms, masking, control-frame limits, close frames."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tb.ws import CloseCode, Connection, Opcode, apply_mask, encode_close, encode_frame
from tb.ws.frames import is_valid_close_code


def reference_mask(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


@pytest.mark.parametrize(
    ("size", "len7", "header"),
    [(0, 0, 2), (1, 1, 2), (125, 125, 2), (126, 126, 4), (65535, 126, 4), (65536, 127, 10)],
)
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
def test_length_forms_round_trip_unmasked(opcode: int, size: int, len7: int, header: int) -> None:
    payload = b"a" * size
    frame = encode_frame(opcode, payload, mask=False)
    assert frame[0] == 0x80 | opcode
    assert frame[1] == len7
    assert len(frame) == header + size
    conn = Connection(client=True)
    assert conn.receive(memoryview(frame)) == len(frame)
    assert [bytes(m) for m in conn.messages] == [payload]


@pytest.mark.parametrize("size", [0, 5, 125, 126, 1000, 65535, 65536, 200_003])
def test_masked_round_trip_through_server_role(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = encode_frame(Opcode.BINARY, payload, mask=True)
    assert frame[1] & 0x80
    header = 2 if size < 126 else 4 if size < 65536 else 10
    assert len(frame) == header + 4 + size
    key = frame[header : header + 4]
    assert reference_mask(frame[header + 4 :], key) == payload
    conn = Connection(client=False)
    assert conn.receive(memoryview(frame)) == len(frame)
    assert conn.messages == [payload]


def test_fresh_mask_per_frame() -> None:
    payload = b"the same payload, twice" * 10
    frames = {encode_frame(Opcode.TEXT, payload, mask=True) for _ in range(8)}
    assert len(frames) == 8  # 8 equal 32-bit keys by chance: ~2**-160
    keys = {f[4:8] for f in frames}
    assert len(keys) == 8


@given(st.binary(max_size=600), st.binary(min_size=4, max_size=4))
def test_apply_mask_matches_byte_loop(data: bytes, key: bytes) -> None:
    assert apply_mask(data, key) == reference_mask(data, key)
    assert apply_mask(memoryview(data), key) == reference_mask(data, key)
    assert apply_mask(apply_mask(data, key), key) == data


def test_fin_bit_and_control_limits() -> None:
    assert encode_frame(Opcode.TEXT, b"x", mask=False, fin=False)[0] == 0x01
    assert encode_frame(Opcode.PING, b"x" * 125, mask=False)[1] == 125
    with pytest.raises(ValueError, match="control frame"):
        encode_frame(Opcode.PING, b"x" * 126, mask=False)
    with pytest.raises(ValueError, match="control frame"):
        encode_frame(Opcode.CLOSE, b"", mask=False, fin=False)
    with pytest.raises(ValueError, match="unknown opcode"):
        encode_frame(3, b"", mask=False)


def test_encode_close() -> None:
    assert encode_close(mask=False) == b"\x88\x02\x03\xe8"
    assert encode_close(1001, "bye", mask=False) == b"\x88\x05\x03\xe9bye"
    assert encode_close(None, mask=False) == b"\x88\x00"
    masked = encode_close(CloseCode.GOING_AWAY, "é", mask=True)
    assert masked[1] == 0x80 | 4
    assert reference_mask(masked[6:], masked[2:6]) == b"\x03\xe9" + "é".encode()
    for bad in (999, 1004, 1005, 1006, 1015, 1016, 2999, 5000):
        with pytest.raises(ValueError, match="may not be sent"):
            encode_close(bad, mask=False)
    with pytest.raises(ValueError, match="123"):
        encode_close(1000, "x" * 124, mask=False)
    with pytest.raises(ValueError, match="needs a close code"):
        encode_close(None, "why", mask=False)


def test_close_code_rules() -> None:
    valid = {c for c in range(0, 6000) if is_valid_close_code(c)}
    assert valid == set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))

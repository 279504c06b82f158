from __future__ import annotations

import struct

import pytest

from tb.capture import MAGIC, CaptureError, CaptureWriter, count_events, read_capture

PAYLOADS = [
    b'[{"ev":"status","status":"connected","message":"Connected Successfully"}]',
    b'[{"ev":"T","sym":"AAPL","i":"1","x":4,"p":190.12,"s":100,"t":1,"q":1,"z":3}]',
    b"[]",
    b'[{"ev": "T", "sym": "MSFT"}, {"ev": "T", "sym": "NVDA"}]',
]


def test_binary_round_trip(tmp_path):
    path = tmp_path / "feed.tbcap"
    with CaptureWriter(path) as w:
        for p in PAYLOADS:
            w.write(p)
        w.write(memoryview(b"[1]"))
    assert w.messages == len(PAYLOADS) + 1
    assert w.bytes == sum(map(len, PAYLOADS)) + 3
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    assert len(data) == len(MAGIC) + 4 * w.messages + w.bytes
    assert list(read_capture(path)) == PAYLOADS + [b"[1]"]


def test_binary_layout_is_u32_le(tmp_path):
    path = tmp_path / "one.tbcap"
    with CaptureWriter(path) as w:
        w.write(b"[ab]")
    assert path.read_bytes() == MAGIC + struct.pack("<I", 4) + b"[ab]"


def test_empty_capture(tmp_path):
    path = tmp_path / "empty.tbcap"
    with CaptureWriter(path):
        pass
    assert list(read_capture(path)) == []
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert list(read_capture(empty)) == []


def test_json_lines(tmp_path):
    path = tmp_path / "feed.jsonl"
    path.write_bytes(b"\n".join(PAYLOADS) + b"\n\n   \n" + PAYLOADS[0] + b"\r\n")
    assert list(read_capture(path)) == PAYLOADS + [PAYLOADS[0]]


def test_json_lines_rejects_non_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(PAYLOADS[0] + b"\nhello\n")
    with pytest.raises(CaptureError, match=r"bad.jsonl:2"):
        list(read_capture(path))


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 10])
def test_truncated(tmp_path, cut):
    path = tmp_path / "t.tbcap"
    with CaptureWriter(path) as w:
        w.write(PAYLOADS[0])
        w.write(PAYLOADS[1])
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    it = read_capture(path)
    assert next(it) == PAYLOADS[0]
    with pytest.raises(CaptureError, match="truncated capture: message 1"):
        next(it)


def test_bad_magic(tmp_path):
    path = tmp_path / "v9.tbcap"
    path.write_bytes(b"TBCAP9\n" + struct.pack("<I", 2) + b"[]")
    with pytest.raises(CaptureError, match="unsupported capture version"):
        list(read_capture(path))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CaptureError, match="not a capture"):
        list(read_capture(junk))


def test_write_after_close(tmp_path):
    w = CaptureWriter(tmp_path / "x.tbcap")
    w.close()
    with pytest.raises(CaptureError):
        w.write(b"[]")


def test_count_events():
    assert count_events(PAYLOADS[0]) == 1
    assert count_events(PAYLOADS[2]) == 0
    assert count_events(memoryview(PAYLOADS[3])) == 2
    assert count_events(b'{"ev":"T"}') == 1
    with pytest.raises(ValueError):
        count_events(b"[{")

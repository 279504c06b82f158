"""Cutting pipe bytes into messages of whole records, and the partition and subject rules."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tb.jetstream.records import complete_end, count_records, cut_messages
from tb.jetstream.stream import parse_partitions, subject_matches


def record(pad: int) -> bytes:
    body = json.dumps({"ev": "T", "sym": "AAPL", "pad": "x" * pad}).encode()
    return struct.pack("<I", len(body)) + body


sizes = st.lists(st.sampled_from([0, 3, 100, 700, 5000, 70000]), min_size=1, max_size=25)


@given(sizes, st.integers(min_value=0), st.sampled_from([64, 1000, 16 << 10, 64 << 10]))
def test_cuts_fall_on_record_boundaries(pads, at, size):
    records = [record(p) for p in pads]
    data = b"".join(records)
    bounds = [0]
    for r in records:
        bounds.append(bounds[-1] + len(r))
    part = data[: at % (len(data) + 1)]
    assert complete_end(part) == max(b for b in bounds if b <= len(part))
    messages = cut_messages(data, size)
    assert b"".join(messages) == data
    for m in messages:
        assert complete_end(m) == len(m)  # whole records only
        # never over size, unless a single record (or one the scan cannot see) is bigger
        assert len(m) <= size or count_records(m) <= 1
    if all(p < 60000 for p in pads):
        assert sum(count_records(m) for m in messages) == len(records)


def test_partitions():
    assert parse_partitions("0-3") == [0, 1, 2, 3]
    assert parse_partitions("9,3,7") == [3, 7, 9]
    assert parse_partitions("0-2, 8") == [0, 1, 2, 8]
    for bad in ("", "3-1", "-1", "1,1", "0-3,2", "x"):
        with pytest.raises(ValueError):
            parse_partitions(bad)


def test_subjects():
    assert subject_matches("T.*", "T.3")
    assert subject_matches("T.>", "T.3")
    assert subject_matches(">", "T.3")
    assert subject_matches("T.3", "T.3")
    assert not subject_matches("T.*", "U.3")
    assert not subject_matches("T.*", "T.3.x")
    assert not subject_matches("T.4", "T.3")

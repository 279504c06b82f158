"""read_capture on arbitrary files: only CaptureError, and what it yields is in the file."""

from __future__ import annotations

from fuzz_targets import capture
from hypothesis import given, settings
from hypothesis import strategies as st
from stream_strategies import mutated

from tb.capture import MAGIC, CaptureWriter, read_capture


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6), st.booleans(), st.data())
def test_binary_captures_round_trip_and_survive_mutation(payloads, mutate, data):
    raw = MAGIC + b"".join(len(p).to_bytes(4, "little") + p for p in payloads)
    capture(data.draw(mutated(raw)) if mutate else raw)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"[]", b'{"a":1}', b"  [1] ", b"", b"\r", b"x", b"TBCAP1"]), max_size=6
    )
)
def test_json_lines(lines):
    capture(b"\n".join(lines))


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=120))
def test_raw_bytes(data):
    capture(data)
    capture(MAGIC + data)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_writer_and_reader_agree(tmp_path_factory, payloads):
    path = tmp_path_factory.mktemp("cap") / "x.tbcap"
    with CaptureWriter(path) as w:
        for p in payloads:
            w.write(p)
    assert list(read_capture(path)) == payloads

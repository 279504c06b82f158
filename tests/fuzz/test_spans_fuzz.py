"""route_spans / small_lane under fuzzing: never raise; a batch they return equals
route_python's (strictly for valid JSON; for invalid JSON they must agree with each other --
the documented limit of the span router, see fuzz_targets.run_spans). route_frames finds the
frames scan_data_frames finds and routes them as route_spans does (fuzz_targets.run_frames)."""

from __future__ import annotations

import json

from fuzz_targets import PAD_FILL, frames_arena, run_frames, run_spans, spans
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stream_strategies import mutated

SETTINGS = settings(max_examples=35, deadline=None, suppress_health_check=list(HealthCheck))
SYMBOLS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ.:-0123456789", min_size=1, max_size=33)
EXTRA = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=250)
EVENTS = ["T"] * 5 + ["Q", "AM", "LULDXYZ", "XT", "C", "status"]


def trade(
    sym: str, q: int, extra: str, spaced: bool, ev: str = "T", key: str = "sym", more: str = "note"
) -> str:
    if key == "p":  # a forex quote: its pair in p, first after ev
        obj = {"ev": ev, "p": sym, "x": 48, "a": 6.83, "b": 6.82, "t": q}
    else:
        obj = {"ev": ev, key: sym, "i": str(q), "x": 4, "p": 1.5, "s": 1, "t": 1, "q": q}
    if extra:
        obj[more] = extra  # a note, or a second instrument key further on
    return json.dumps(obj, separators=(", ", ": ") if spaced else (",", ":"))


@st.composite
def feed_batches(draw) -> list[bytes]:
    spaced = draw(st.booleans())
    # a batch of one kind, or mixed: sym (stocks), pair (crypto, forex aggregates), forex quotes
    kinds = draw(
        st.sampled_from([["sym"], ["sym"], ["pair"], ["p"], ["pair", "p"], ["sym", "pair"]])
    )
    out = []
    for _ in range(draw(st.integers(1, 12))):
        objs = []
        for q in range(draw(st.integers(0, 8))):
            key = draw(st.sampled_from(kinds))
            ev = "C" if key == "p" else draw(st.sampled_from(EVENTS))
            more = draw(st.sampled_from(["note"] * 6 + ["sym", "pair", "p"]))
            objs.append(trade(draw(SYMBOLS), q, draw(EXTRA), spaced, ev, key, more))
        out.append(("[" + (", " if spaced else ",").join(objs) + "]").encode())
    return out


@SETTINGS
@given(
    feed_batches(),
    st.sampled_from([1, 4, 32, 300]),
    st.sampled_from(["mixed", "compat"]),
    st.integers(0, 7),
    st.sampled_from(PAD_FILL),
)
def test_feed_batches(payloads, npipes, hash_name, lead, fill):
    a, starts, ends = frames_arena(payloads, lead, fill)
    run_spans(a, starts, ends, npipes, hash_name)
    for cut in (int(ends[-1]), int(ends[-1]) - 1, int(starts[-1]) - 1, int(starts[0]) + 3):
        if cut > lead:
            run_frames(a, lead, cut, npipes, hash_name)


@SETTINGS
@given(feed_batches(), st.sampled_from([3, 32]), st.sampled_from(PAD_FILL), st.data())
def test_mutated_feed_batches(payloads, npipes, fill, data):
    payloads = [data.draw(mutated(p)) if data.draw(st.booleans()) else p for p in payloads]
    a, starts, ends = frames_arena(payloads, 2, fill)
    run_spans(a, starts, ends, npipes, "mixed")
    run_frames(a, 2, int(ends[-1]), npipes, "mixed")


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=300))
def test_raw_bytes(data):
    spans(data)
    spans(data[:1] + bytes([(data[1:2] or b"\x00")[0] | 0x40]) + data[2:])  # raw-arena mode

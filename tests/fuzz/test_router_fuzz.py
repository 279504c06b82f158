"""The batch router under fuzzing: feed-like JSON with odd layouts, mutations, raw bytes.

tests/route/test_router_props.py checks the two paths against a model on generated feeds; here
the inputs are also broken, and besides python == numpy == route(): the accounting holds, every
record is the feed's own bytes, a batch split in two routes the same, and valid JSON matches
the model (fuzz_targets.reference).
"""

from __future__ import annotations

import json

from fuzz_targets import run_router
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stream_strategies import mutated

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
SYMBOLS = st.sampled_from(
    ["AAPL", "A", "BRK.A", "", "A B", "}", '"', "\\", "é", "\ud800", "X" * 33]
)
VALUES = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.none(),
    SYMBOLS,
    st.lists(st.integers(), max_size=2),
)
KEYS = st.sampled_from(["ev", "sym", "pair", "p", "status", "message", "i", "x", "c"])
WS = st.sampled_from(["", "", " ", "\t", "\n", ", "])


@st.composite
def event(draw) -> str:
    ev = draw(st.sampled_from(["T", "Q", "XT", "C", "status", "AM", "LULD"]))
    obj = {
        "ev": ev,
        "sym" if ev not in ("XT", "C") else ("pair" if ev == "XT" else "p"): draw(SYMBOLS),
    }
    obj.update(draw(st.dictionaries(KEYS, VALUES, max_size=3)))
    keys = draw(st.permutations(list(obj)))
    a, b = draw(WS).strip(","), draw(WS).strip(",")
    ascii_only = draw(st.booleans())
    body = ("," + a).join(
        json.dumps(k) + b + ":" + a + json.dumps(obj[k], ensure_ascii=ascii_only) for k in keys
    )
    return "{" + a + body + b + "}"


@st.composite
def batches(draw) -> list[bytes]:
    out = []
    for _ in range(draw(st.integers(0, 5))):
        objs = draw(st.lists(event(), max_size=6))
        sep = draw(st.sampled_from([",", ", ", " ,", ",\n"]))
        out.append(("[" + sep.join(objs) + "]").encode("utf-8", "surrogatepass"))
    return out


@SETTINGS
@given(batches(), st.sampled_from([1, 3, 8, 300]), st.sampled_from(["mixed", "compat"]))
def test_feed_like_batches(payloads, npipes, hash_name):
    run_router(payloads, npipes, hash_name)


@SETTINGS
@given(batches(), st.sampled_from([1, 5, 32]), st.data())
def test_mutated_batches(payloads, npipes, data):
    payloads = [data.draw(mutated(p)) if data.draw(st.booleans()) else p for p in payloads]
    run_router(payloads, npipes, "mixed")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=4), st.sampled_from([1, 7]))
def test_raw_bytes(payloads, npipes):
    run_router(payloads, npipes, "compat")

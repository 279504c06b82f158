"""Property tests: random feeds through both paths and against a reference model."""

from __future__ import annotations

import json
import os
import struct

from harness import reference_route, top_level_spans
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tb.route import RouteBatch, Router

WS = st.sampled_from(["", "", "", " ", " ", "\t", "\n", "\r\n", " \n\t "])
PLAIN = ["A", "F", "AA", "AAPL", "BRK.A", "MSFT", "SPY", "O:SPY251219C00650000", "X" * 30]
SYMBOLS = st.one_of(
    st.sampled_from(PLAIN * 4 + ["Y" * 32, "Z" * 33, "Q" * 45, "", "A B", "{}", "a:b,c", "é"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=35),  # escapes, unicode
)
TEXT = st.sampled_from(["", "x", "sym", "pair", "ev", "p", "status", "C", "}", "{", '"', "\\"])
SCALARS = st.one_of(st.integers(-(2**53), 2**53), st.floats(allow_nan=False), st.none(), TEXT)
VALUES = st.one_of(
    SCALARS,
    st.lists(st.integers(0, 99), max_size=3),
    st.dictionaries(st.sampled_from(["sym", "a"]), SCALARS, max_size=2),  # nested
)
CLEAN = ["T"] * 6 + ["Q", "XT", "C", "CA", "status", "none"]
KINDS = CLEAN + ["odd", "weird"]


@st.composite
def events(draw, clean: bool) -> dict:
    kind = draw(st.sampled_from(CLEAN if clean else KINDS))
    obj: dict = {"ev": kind}
    symbols = st.sampled_from(PLAIN) if clean else SYMBOLS
    if kind in ("T", "Q"):
        obj.update(sym=draw(symbols), i="12345", x=4, p=draw(st.floats(0, 1e5)), s=100)
        obj.update(t=1700000000000, c=[12, 37])
    elif kind in ("XT", "CA"):
        obj["pair"] = draw(symbols)
    elif kind == "C":
        obj.update(p=draw(symbols), a=1.1, b=1.09)
    elif kind == "status":
        obj.update(status=draw(st.sampled_from(["connected", "success"])), message="hi")
    elif kind == "odd":
        obj[draw(st.sampled_from(["sym", "pair", "p"]))] = draw(VALUES)
        if draw(st.booleans()):
            del obj["ev"]
    elif kind == "weird":
        obj.update(sym=draw(SYMBOLS), z=draw(VALUES))
    return obj


@st.composite
def serialized(draw, obj: dict) -> str:
    keys = draw(st.permutations(list(obj)))
    a, b, c = draw(WS), draw(WS), draw(WS)
    ascii_only = draw(st.booleans())
    items = [
        json.dumps(k) + a + ":" + b + json.dumps(obj[k], ensure_ascii=ascii_only) for k in keys
    ]
    return "{" + c + ("," + a).join(items) + c + "}"


@st.composite
def feeds(draw, garbage: bool) -> list:
    payloads = []
    for _ in range(draw(st.integers(0, 6))):
        clean = draw(st.booleans())  # clean messages exercise the fast scanners
        objs = draw(st.lists(events(clean), max_size=draw(st.sampled_from([1, 4, 12]))))
        texts = [draw(serialized(o)) for o in objs]
        a, b = draw(WS), draw(WS)
        if draw(st.booleans()):  # one separator style per message, or one per gap
            body = ("," + b).join(texts)
        else:
            body = "".join(t if i == 0 else "," + draw(WS) + t for i, t in enumerate(texts))
        message = (a + "[" + b + body + b + "]" + a).encode()
        if garbage and draw(st.integers(0, 4)) == 0:
            cut = draw(st.integers(0, max(len(message) - 1, 0)))
            message = draw(
                st.sampled_from(
                    [message[:cut], message + b"]", message.replace(b",", b"", 1), b"nope"]
                )
            )
        wrap = draw(st.sampled_from([bytes, bytearray, memoryview]))
        payloads.append(wrap(message))
    return payloads


def snapshot(batch: RouteBatch) -> tuple:
    return (
        tuple(bytes(r) if r is not None and len(r) else None for r in batch.runs),
        tuple(batch.counts),
        (batch.events, batch.routed, batch.fallback, batch.no_symbol, batch.malformed),
        tuple(json.dumps(s, sort_keys=True) for s in batch.statuses),
        tuple(batch.errors),
    )


def records(run) -> list[bytes]:
    out, data, at = [], bytes(run or b""), 0
    while at < len(data):
        (n,) = struct.unpack_from("<I", data, at)
        out.append(data[at + 4 : at + 4 + n])
        at += 4 + n
    return out


def reference(payloads, npipes: int, hash: str):
    """Independent model: decode each message, re-find each object's bytes, pick its pipe."""
    messages = [bytes(p) for p in payloads]
    docs = [json.loads(m) for m in messages]
    for message, doc in zip(messages, docs, strict=True):  # the model finds each object's bytes
        assert [json.loads(message[s:e]) for s, e in top_level_spans(message)] == doc
    return reference_route(messages, docs, npipes, hash)


SETTINGS = settings(
    max_examples=int(os.environ.get("TB_ROUTE_EXAMPLES", "60")),  # raise to fuzz longer
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@SETTINGS
@given(feeds(garbage=False), st.sampled_from([1, 3, 8, 32]), st.sampled_from(["mixed", "compat"]))
def test_paths_agree_with_the_reference_model(payloads, npipes, hash):
    py = Router(npipes, hash=hash).route_python(payloads)
    nb = Router(npipes, hash=hash).route_numpy(payloads)
    assert snapshot(py) == snapshot(nb)
    pipes, statuses, no_symbol = reference(payloads, npipes, hash)
    assert [records(r) for r in py.runs] == pipes
    assert py.counts == [len(p) for p in pipes]
    assert py.statuses == statuses and py.no_symbol == no_symbol
    assert py.malformed == 0 and py.errors == []
    assert py.events == py.routed + len(statuses) + no_symbol


@SETTINGS
@given(feeds(garbage=True), st.sampled_from([1, 5, 32]))
def test_paths_agree_on_anything(payloads, npipes):
    py = Router(npipes).route_python(payloads)
    nb = Router(npipes).route_numpy(payloads)
    assert snapshot(py) == snapshot(nb)
    assert sum(py.counts) == py.routed

"""Property tests: random feeds through every lane of the Router, against the reference.

The reference is Router.route_python (itself checked against an independent model that decodes
each message); the general numpy lane must match it on anything, valid or not; the feed-shaped
lanes (small, spans, frames -- and route_arena, which picks one of them by size) must match it
or decline, on valid JSON, whichever way the batch is split into receives."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
from harness import reference_route, top_level_spans
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tb.route import SPAN_PAD, Plan, RouteBatch, Router
from tb.route.hashing import HASHES
from tb.ws import Opcode, encode_frame

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


# -- every lane against the reference, at random splits -----------------------------------------


def framed_arena(payloads: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The payloads as server text frames in an arena (as the balancer receives them), with
    SPAN_PAD bytes to spare: (arena, payload starts, payload ends, where the frames end)."""
    frames, starts, ends = bytearray(), [], []
    for p in payloads:
        f = encode_frame(Opcode.TEXT, bytes(p), mask=False)
        starts.append(len(frames) + len(f) - len(p))
        frames += f
        ends.append(len(frames))
    end = len(frames)
    frames += bytes(SPAN_PAD)
    return (
        np.frombuffer(frames, np.uint8),
        np.array(starts, np.int64),
        np.array(ends, np.int64),
        end,
    )


def same_records(got: RouteBatch, want: RouteBatch) -> bool:
    """The same records on the same pipes in the same order, and the same events and statuses."""
    return (
        [records(r) for r in got.runs] == [records(r) for r in want.runs]
        and list(got.counts) == list(want.counts)
        and (got.events, got.routed, got.statuses) == (want.events, want.routed, want.statuses)
    )


def small_lane(router: Router, payloads: list) -> RouteBatch | None:
    got = router.small_runs([memoryview(bytes(p)) for p in payloads])
    if got is None:
        return None
    runs, counts, used, n = got
    assert sorted(used) == [i for i, r in enumerate(runs) if r is not None]
    return RouteBatch(runs, counts, n, n, used=used)


def settled(batch: RouteBatch | None) -> RouteBatch | None:
    """The batch with its runs copied out of the router's scratch."""
    if batch is not None:
        batch.runs = [None if r is None else bytes(r) for r in batch.runs]
    return batch


def lanes(router: Router, payloads: list, cut: int) -> dict:
    """Each lane's batch for `payloads` (None: declined); route_frames' on the receive cut at
    byte `cut` of the frames, with the messages it took."""
    a, starts, ends, end = framed_arena(payloads)
    before = a.tobytes()
    got = {"numpy": (router.route_numpy(payloads), len(payloads))}
    got["small"] = small_lane(router, payloads), len(payloads)
    # (the span lanes' runs are views of the router's scratch, valid until its next batch)
    got["spans"] = settled(router.route_spans(a, starts, ends)), len(payloads)
    got["arena"] = settled(router.route_arena(a, starts, ends)[0]), len(payloads)
    framed = router.route_frames(a, 0, min(cut, end), 16 << 20)
    if framed is not None:
        batch, f_starts, f_ends, stop = framed
        k = len(f_starts)
        assert f_starts.tolist() == starts[:k].tolist() and f_ends.tolist() == ends[:k].tolist()
        complete = int((ends <= min(cut, end)).sum())  # (frames wholly before the cut)
        assert k <= complete and stop == (ends[k - 1] if k else 0)
        got["frames"] = settled(batch), k
    assert a.tobytes() == before  # (the lanes blank frame headers for a moment, then restore)
    return got


@SETTINGS
@given(
    feeds(garbage=False),
    st.sampled_from([1, 3, 8, 32]),
    st.sampled_from(["mixed", "compat"]),
    st.sampled_from([0, 1 << 30]),  # route_arena: the span lane, or the small one
    st.data(),
)
def test_every_lane_agrees_with_the_reference_at_random_splits(payloads, npipes, hash, size, data):
    lanes_at_random_splits(payloads, npipes, hash, size, data, None)


def lanes_at_random_splits(payloads, npipes, hash, size, data, plan) -> None:
    """Every lane (one router, so one cache, across the parts) against the reference, with the
    batch split at random into two receives, each cut at random for route_frames."""
    whole = Router(npipes, hash=hash, plan=plan).route_python(payloads)
    router = Router(npipes, hash=hash, numpy_min_bytes=size, plan=plan)
    split = data.draw(st.integers(0, len(payloads)), label="split")
    joined: list[list[bytes]] = [[] for _ in range(npipes)]
    for part in (payloads[:split], payloads[split:]):
        if not part:
            continue
        want = Router(npipes, hash=hash, plan=plan).route_python(part)
        for pipe, run in enumerate(want.runs):
            joined[pipe] += records(run)
        cut = data.draw(st.integers(0, sum(len(p) + 10 for p in part)), label="receive cut")
        for lane, (batch, k) in lanes(router, part, cut).items():
            if batch is None:
                continue  # declined: the caller routes these messages the general way
            ref = (
                want
                if k == len(part)
                else Router(npipes, hash=hash, plan=plan).route_python(part[:k])
            )
            assert same_records(batch, ref), lane
    assert joined == [records(r) for r in whole.runs]  # split anywhere, the same records


# -- planned pipes --------------------------------------------------------------------------------


@st.composite
def plans(draw, npipes: int, hash: str) -> Plan:
    """Some of the feeds' symbols (and some they never name) on random pipes."""
    named = st.sampled_from(PLAIN + ["Y" * 31, "Y" * 32, "Z" * 33, "é", "A B", "BRK.B"])
    known = draw(st.lists(st.one_of(named, SYMBOLS), unique=True, max_size=14))
    pipe = st.integers(0, npipes - 1)
    symbols = {s.encode("utf-8", "surrogatepass"): draw(pipe) for s in known if s}
    return Plan(pipes=npipes, hash=hash, symbols=symbols)


@st.composite
def shaped_feeds(draw) -> list:
    """Messages as the feed lays them out (ev, then the instrument, compact or spaced): what the
    feed-shaped lanes take rather than decline."""
    spaced = draw(st.booleans())
    seps = (", ", ": ") if spaced else (",", ":")
    payloads = []
    for _ in range(draw(st.integers(1, 5))):
        objs = []
        for _ in range(draw(st.integers(1, 12))):
            kind = draw(st.sampled_from(["T", "T", "Q", "XT", "C"]))
            name = draw(st.sampled_from(PLAIN + ["BRK.B", "Y" * 31]))
            key = {"XT": "pair", "C": "p"}.get(kind, "sym")
            obj = {"ev": kind, key: name, "x": draw(st.integers(0, 20)), "s": 100}
            objs.append(json.dumps(obj, separators=seps))
        payloads.append(("[" + seps[0].join(objs) + "]").encode())
    return payloads


def planned_place(obj: dict, plan: Plan) -> int | None:
    """The model: a decoded event's instrument (as harness.reference_place finds it), then its
    planned pipe, else its hash pipe."""
    ev = obj.get("ev")
    key = next((k for k in ("sym", "pair") if k in obj), "p" if ev == "C" else None)
    if ev == "status" or key is None or not isinstance(obj.get(key), str):
        return None
    sym = obj[key].encode("utf-8", "surrogatepass")
    if sym in plan.symbols:
        return plan.symbols[sym]
    return HASHES[plan.hash](sym, plan.pipes)


@SETTINGS
@given(
    st.one_of(feeds(garbage=False), shaped_feeds()),
    st.sampled_from([1, 3, 8, 32]),
    st.sampled_from(["mixed", "compat"]),
    st.sampled_from([0, 1 << 30]),
    st.data(),
)
def test_planned_lanes_agree_with_the_reference_and_the_plan(payloads, npipes, hash, size, data):
    plan = data.draw(plans(npipes, hash), label="plan")
    batch = Router(npipes, hash=hash, plan=plan).route_python(payloads)
    placed = 0
    for pipe, run in enumerate(batch.runs):
        for rec in records(run):
            assert planned_place(json.loads(rec), plan) == pipe, rec
            placed += 1
    assert placed == batch.routed
    lanes_at_random_splits(payloads, npipes, hash, size, data, plan)


@SETTINGS
@given(feeds(garbage=True), st.sampled_from([1, 5, 32]), st.data())
def test_planned_paths_agree_on_anything(payloads, npipes, data):
    plan = data.draw(plans(npipes, "mixed"), label="plan")
    py = Router(npipes, plan=plan).route_python(payloads)
    nb = Router(npipes, plan=plan).route_numpy(payloads)
    assert snapshot(py) == snapshot(nb)


def test_the_feed_shaped_lanes_take_the_feed():
    """The property above would pass with lanes that decline everything: on the feed's own
    shapes each lane must route, not decline."""
    trades = [
        b'[{"ev":"T","sym":"AAPL","i":"1","x":4,"p":1.5,"s":100,"t":1700000000000}]',
        b'[{"ev": "T", "sym": "MSFT", "p": 1.5},{"ev": "Q", "sym": "A", "bp": 1}]',
        b'[{"ev":"XT","pair":"BTC-USD","p":1},{"ev":"C","p":"EUR/USD","a":1.1}]',
    ]
    got = lanes(Router(8), trades, 1 << 20)
    assert all(batch is not None and k == len(trades) for batch, k in got.values()), got


def test_the_feed_shaped_lanes_take_a_planned_feed():
    """Every lane routes a feed-shaped batch with a plan (none declines it), and puts each planned
    symbol on its planned pipe -- chosen here to be none of the hashes' pipes."""
    names = [b"AAPL", b"MSFT", b"BTC-USD", b"EUR/USD", b"O:SPY251219C00650000", b"SPY"]
    npipes = 8
    symbols = {}
    for sym in names[:-1]:
        hashed = {HASHES[h](sym, npipes) for h in HASHES}
        symbols[sym] = min(set(range(npipes)) - hashed)
    plan = Plan(pipes=npipes, hash="mixed", symbols=symbols)
    trades = [
        b'[{"ev":"T","sym":"AAPL","i":"1","x":4,"p":1.5,"s":100,"t":1700000000000}]',
        b'[{"ev": "T", "sym": "MSFT", "p": 1.5},{"ev": "Q", "sym": "SPY", "bp": 1}]',
        b'[{"ev":"XT","pair":"BTC-USD","p":1},{"ev":"C","p":"EUR/USD","a":1.1}]',
        b'[{"ev":"T","sym":"O:SPY251219C00650000","p":1}]',
    ]
    want = {s: symbols.get(s, HASHES["mixed"](s, npipes)) for s in names}
    for lane, (batch, k) in lanes(Router(npipes, plan=plan), trades, 1 << 20).items():
        assert batch is not None and k == len(trades), lane
        for pipe, run in enumerate(batch.runs):
            assert all(want[planned_sym(rec)] == pipe for rec in records(run)), lane
        assert sum(batch.counts) == 6, lane


def planned_sym(rec: bytes) -> bytes:
    obj = json.loads(rec)
    return (obj.get("sym") or obj.get("pair") or obj["p"]).encode()

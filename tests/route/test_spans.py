"""The feed-shaped lanes (span, frames, small) reproduce the reference byte for byte, or decline."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tb.gen import generate
from tb.route import RouteBatch, Router
from tb.route.batch import SYMBOL_CACHE_MAX
from tb.route.spans import ROW, SPAN_PAD, route_frames, route_spans
from tb.ws import Opcode, encode_frame
from tb.ws.scan import scan_data_frames


def arena_of(payloads: list[bytes], lead: int = 0):
    """The payloads as server frames in an arena (like the balancer's), and their spans."""
    frames = bytearray(b"\x00" * lead)
    starts, ends = [], []
    for p in payloads:
        f = encode_frame(Opcode.TEXT, p, mask=False)
        head = len(f) - len(p)
        starts.append(len(frames) + head)
        frames += f
        ends.append(len(frames))
    arena = bytearray(frames) + bytes(SPAN_PAD)
    return np.frombuffer(arena, np.uint8), np.array(starts, np.int64), np.array(ends, np.int64)


def small(payloads, npipes=5, hash_name="mixed", router=None):
    """The small lane's batch (as a RouteBatch), or None when it declines."""
    router = router or Router(npipes, hash=hash_name)
    got = router.small_runs([memoryview(p) for p in payloads])
    if got is None:
        return None
    runs, counts, used, n = got
    return RouteBatch(runs, counts, n, n, used=used)


def same(a, b) -> bool:
    runs = all(
        (bytes(x) if x else b"") == (bytes(y) if y else b"")
        for x, y in zip(a.runs, b.runs, strict=True)
    )
    return runs and (a.counts, a.routed, a.events, a.statuses) == (
        b.counts,
        b.routed,
        b.events,
        b.statuses,
    )


@pytest.mark.parametrize("profile", ["burst", "quiet"])
@pytest.mark.parametrize("style", ["compact", "spaced"])
@pytest.mark.parametrize("hash_name,npipes", [("mixed", 32), ("compat", 7), ("mixed", 1)])
def test_generated_feeds_identical_to_python_path(profile, style, hash_name, npipes):
    payloads = list(generate(profile=profile, trades=3000, symbols=500, style=style, seed=3))
    a, starts, ends = arena_of(payloads)
    got = route_spans(a, starts, ends, npipes, hash_name)
    assert got is not None
    ref = Router(npipes, hash=hash_name).route_python(payloads)
    assert same(got, ref)
    assert same(small(payloads, npipes, hash_name), ref)


def trade(sym: str, q: int, extra: str = "", spaced: bool = False) -> bytes:
    obj = {"ev": "T", "sym": sym, "i": str(q), "x": 4, "p": 1.5, "s": 1, "t": 1, "q": q}
    if extra:
        obj["note"] = extra
    sep = (", ", ": ") if spaced else (",", ":")
    return json.dumps(obj, separators=sep).encode()


def message(objs: list[bytes], spaced: bool = False) -> bytes:
    return b"[" + (b", " if spaced else b",").join(objs) + b"]"


@pytest.mark.parametrize("hash_name", ["mixed", "compat"])
def test_options_symbols_identical_to_python_path(hash_name):
    # the long-symbol lane: OPRA-style symbols of 15-31 bytes, mixed with short ones
    rng = random.Random(2)
    syms = [b"O:SPY251219C00650000", b"O:AAPL260116P00195000", b"O:X250321C00031000", b"A"]
    syms += [b"O:" + bytes(rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(k))
             for k in range(13, 30)]  # fmt: skip
    payloads = [
        re.sub(rb'"sym":"[^"]*"', lambda m: b'"sym":"' + rng.choice(syms) + b'"', p)
        for p in generate(profile="burst", trades=3000, symbols=500, seed=4)
    ]
    a, starts, ends = arena_of(payloads)
    got = route_spans(a, starts, ends, 32, hash_name)
    assert got is not None and same(got, Router(32, hash=hash_name).route_python(payloads))


def test_long_records_long_symbols_and_the_arena_start():
    payloads = [
        message(
            [trade("A", 1), trade("O:SPY251219C00650000", 2, "x" * (3 * ROW)), trade("BRK.A", 3)]
        ),
        message([trade("Z" * 31, 4), trade("QQQ", 5, "y" * (ROW - 60))]),
        b"[]",
        message([trade("QQQ", 7, "z" * 5000), trade("A", 8)]),  # a record of over 4 KiB
        message([trade("MSFT", 6, spaced=True)], spaced=True),
    ]
    for lead in (0, 1, 5):
        a, starts, ends = arena_of(payloads, lead)
        got = route_spans(a, starts, ends, 5)
        ref = Router(5).route_python(payloads)
        assert got is not None and same(got, ref) and same(small(payloads), ref)


@pytest.mark.parametrize(
    "odd",
    [
        b'[{"ev":"status","status":"success","message":"subscribed to: T.*"}]',
        b'[{"sym":"AAPL","ev":"T","q":1}]',  # another key order
        b'[{"ev":"T","sym":"A\\"B","q":1}]',  # an escape in the symbol
        b'[{"ev":"T","sym":"\\\\AB","q":1}]',  # ... first (an escaped backslash)
        b'[{"ev":"T","sym":"ABCD\\\\","q":1}]',  # ... last of a one-word symbol
        b'[{"ev": "T", "sym": "ABCDE\\\\","q":1}]',  # ... spaced
        b'[{"ev":"T","sym":"O:SPY2512\\u0041C00650000","q":1}]',  # ... in a long symbol
        '[{"ev":"T","sym":"\u00c9T","q":1}]'.encode(),  # unicode
        b'[{"ev":"T","sym":"A","q":1,"x":"\x01"}]',  # a control byte
        b'[{"ev":"T","sym":"A","n":{"k":1}}]',  # nesting
        b'[{"ev":"T","sym":"A","n":"},{"}]',  # braces in a string
        b'[{"ev":"T","sym":"' + b"S" * 32 + b'"}]',  # a symbol longer than the row
        b'[{"ev":"T","sym":"A"} ,{"ev":"T","sym":"B"}]',  # odd whitespace
    ],
)
def test_declines_what_is_not_feed_shaped(odd):
    payloads = [message([trade("AAPL", 1)]), odd, message([trade("MSFT", 2)])]
    a, starts, ends = arena_of(payloads)
    assert route_spans(a, starts, ends, 4) is None
    assert small(payloads, 4) is None


def test_frame_header_bytes_are_not_json():
    # payloads of 125 bytes, or 16-bit lengths with a 0x7D byte, put "}" in the frame headers
    payloads = []
    for target in (125, 0x17D, 0x7D00 + 0x50, 0x27D):
        base = message([trade("AB", target)])
        pad = target - len(message([trade("AB", target, "x")])) + 1
        payloads.append(message([trade("AB", target, "x" * pad)]))
        assert len(payloads[-1]) == target and len(base) < target
    a, starts, ends = arena_of(payloads)
    header_bytes = np.concatenate([a[e:s] for s, e in zip(starts[1:], ends[:-1], strict=True)])
    assert (header_bytes == 0x7D).any()
    got = route_spans(a, starts, ends, 3)
    assert got is not None and same(got, Router(3).route_python(payloads))


symbols = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ.:-0123456789", min_size=1, max_size=31)
extras = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.lists(st.tuples(symbols, extras), max_size=12), min_size=1, max_size=20),
    st.booleans(),
    st.integers(1, 40),
    st.sampled_from(["mixed", "compat"]),
    st.integers(0, 6),
)
def test_random_batches_agree_or_decline(batch, spaced, npipes, hash_name, lead):
    payloads = [
        message([trade(s, i, e, spaced) for i, (s, e) in enumerate(m)], spaced) for m in batch
    ]
    a, starts, ends = arena_of(payloads, lead)
    got = route_spans(a, starts, ends, npipes, hash_name)
    ref = Router(npipes, hash=hash_name).route_python(payloads)
    if got is not None:
        assert same(got, ref)
    lane = small(payloads, npipes, hash_name)
    if lane is not None:
        assert same(lane, ref)


def test_most_random_batches_take_the_fast_path():
    rng = random.Random(4)
    taken = taken_small = 0
    for k in range(30):
        spaced = k % 2 == 1
        payloads = [
            message(
                [trade(f"S{rng.randrange(99)}", q, spaced=spaced) for q in range(rng.randrange(9))],
                spaced,
            )
            for _ in range(20)
        ]
        a, starts, ends = arena_of(payloads)
        taken += route_spans(a, starts, ends, 8) is not None
        taken_small += small(payloads, 8) is not None  # both lanes take feed-shaped batches
    assert taken == taken_small == 30


def test_symbol_cache_stays_bounded():
    lane, router = Router(7), Router(7)
    cache = lane.pipe_cache  # (the one cache every lane of a router fills)
    for start in range(0, SYMBOL_CACHE_MAX + 5000, 2000):
        payloads = [message([trade(f"O:X{k}", k) for k in range(start, start + 2000)])]
        got = small(payloads, router=lane)
        assert got is not None and same(got, router.route_python(payloads))
        assert len(cache) <= SYMBOL_CACHE_MAX
    assert len(cache) < SYMBOL_CACHE_MAX  # it started over once


# -- route_frames: the frames found by the router's own "}" pass -------------------------------


def framed(frames: bytes, stale: bytes = b"\x00"):
    """An arena holding `frames` from offset 3, then stale bytes (what an arena has past its end)."""
    arena = bytearray(b"\x00" * 3) + frames + (stale * (SPAN_PAD + 64))[: SPAN_PAD + 64]
    return np.frombuffer(arena, np.uint8), 3, 3 + len(frames)


def text(payload: bytes) -> bytes:
    return encode_frame(Opcode.TEXT, payload, mask=False)


def scanned(a, pos, end):
    starts, ends, ops, stop = scan_data_frames(a, memoryview(a), pos, end, 16 << 20)
    return list(starts), list(ends), stop


def frames_like_scanning(a, pos: int, cut: int) -> None:
    """route_frames on a[pos:cut] finds what scan_data_frames finds and routes it as Router does."""
    got = route_frames(a, pos, cut, 16 << 20, 32)
    starts, ends, stop = scanned(a, pos, cut)
    if not starts:
        assert got is None
        return
    assert got is not None, cut  # feed frames: always placed
    batch, fs, fe, fstop = got
    assert (fs.tolist(), fe.tolist(), fstop) == (starts, ends, stop)
    msgs = [a[s:e].tobytes() for s, e in zip(starts, ends, strict=True)]
    assert batch is not None and same(batch, Router(32).route_python(msgs))


@pytest.mark.parametrize("profile", ["burst", "quiet"])
@pytest.mark.parametrize("style", ["compact", "spaced"])
def test_route_frames_equals_scanning_then_route_spans(profile, style):
    payloads = list(generate(profile=profile, trades=3000, symbols=500, style=style, seed=5))
    frames = b"".join(text(p) for p in payloads)
    rng = random.Random(9)
    for stale in (b"\x00", b'"}]\x81\x05[{}]'):
        a, pos, end = framed(frames, stale)
        for cut in [end, end - 1, *(rng.randrange(pos + 2, end) for _ in range(12))]:
            frames_like_scanning(a, pos, cut)


def test_route_frames_takes_64_bit_lengths():
    # messages of 64 KiB or more (a burst batched into few frames) have 64-bit lengths, here
    # 0x17D7D: length bytes 0x7D are no object's end. A sender may also use one for a short
    # message.
    trades = [trade(f"S{i % 97}", i, "x" * (i % 7)) for i in range(2000)]
    payloads = [message(trades[:900]), message(trades[900:901]), message(trades[901:])]
    pad = 0x17D7D - len(message(trades[901:-1] + [trade("S1", 1999, "x")])) + 1
    payloads[2] = message(trades[901:-1] + [trade("S1", 1999, "x" * pad)])
    assert len(payloads[2]) == 0x17D7D and len(payloads[0]) > 0xFFFF
    frames = text(payloads[0]) + b"\x81\x7f" + len(payloads[1]).to_bytes(8, "big") + payloads[1]
    frames += text(payloads[2]) + text(message([trade("AB", 1)]))
    assert frames.count(b"\x81\x7f") == 3 and b"\x7d\x7d" in text(payloads[2])[:10]
    rng = random.Random(4)
    a, pos, end = framed(frames)
    for cut in [end, end - 1, *(rng.randrange(pos + 2, end) for _ in range(12))]:
        frames_like_scanning(a, pos, cut)
    assert len(route_frames(a, pos, end, 16 << 20, 32)[1]) == 4
    # past max_message: not placed here (Connection.receive rejects it)
    assert route_frames(a, pos, end, 0xFFFF, 32) is None


def test_route_frames_skips_0x7d_length_bytes():
    # a 125-byte payload has "}" as its 7-bit length; 16-bit lengths 0x017D and 0x7D50 too
    payloads = []
    for target in (125, 0x17D, 0x7D50, 125):
        pad = target - len(message([trade("AB", target, "x")])) + 1
        payloads.append(message([trade("AB", target, "x" * pad)]))
        assert len(payloads[-1]) == target
    a, pos, end = framed(b"".join(text(p) for p in payloads))
    batch, starts, ends, stop = route_frames(a, pos, end, 16 << 20, 3)
    assert stop == end and len(starts) == 4
    assert same(batch, Router(3).route_python(payloads))


def test_route_frames_declines_what_it_cannot_place():
    one, two = message([trade("A", 1)]), message([trade("B", 2)])
    # a frame length of 0x7D5D puts "}]" in its header; "[]" ends without "}]"; so does a
    # message with a space after its last object
    long = message([trade("C", 3, "x" * (0x7D5D - len(message([trade("C", 3, "x")])) + 1))])
    assert len(long) == 0x7D5D
    for middle in (long, b"[]", one[:-1] + b" ]"):
        a, pos, end = framed(text(one) + text(middle) + text(two))
        assert route_frames(a, pos, end, 16 << 20, 4) is None
        assert scanned(a, pos, end)[2] == end  # (scan_data_frames takes them: the usual way)


def test_route_frames_stops_at_a_control_frame_or_a_partial_one():
    one, two = message([trade("A", 1)]), message([trade("B", 2)])
    ping = encode_frame(Opcode.PING, b"hi", mask=False)
    for tail in (ping, ping + text(b"[1"), text(two)[:1], text(two)[:-1], b"\x82\x03[1]"):
        a, pos, end = framed(text(one) + text(two) + tail)
        batch, starts, ends, stop = route_frames(a, pos, end, 16 << 20, 4)
        assert stop == pos + len(text(one)) + len(text(two)) and len(starts) == 2
        assert same(batch, Router(4).route_python([one, two]))
    # a control frame before the last message: scan_data_frames stops there
    a, pos, end = framed(text(one) + ping + text(two))
    assert route_frames(a, pos, end, 16 << 20, 4) is None


def test_route_frames_hands_over_what_is_not_feed_shaped():
    status = b'[{"ev":"status","status":"success","message":"subscribed to: T.*"}]'
    for odd in (status, '[{"ev":"T","sym":"\u00c9T","q":1}]'.encode()):
        frames = text(message([trade("A", 1)])) + text(odd)
        a, pos, end = framed(frames)
        batch, starts, ends, stop = route_frames(a, pos, end, 16 << 20, 4)
        assert batch is None and stop == end  # the spans, for the general router
        assert (starts.tolist(), ends.tolist(), stop) == scanned(a, pos, end)
        assert a[pos:end].tobytes() == frames  # the headers blanked for a moment are back


def test_a_duplicated_sym_key_routes_by_the_first_on_every_path():
    # duplicate keys are legal JSON whose meaning parsers disagree on: tb takes the first
    # everywhere (the slow path decodes first-wins), so batch size never moves an object
    twice = b'{"ev":"T","sym":"AAPL","p":1,"sym":"MSFT"}'
    payloads = [message([trade("MSFT", 1), twice, trade("AAPL", 2)])]
    a, starts, ends = arena_of(payloads)
    router = Router(64)
    pipe = router._pipe_of(b"AAPL")
    assert pipe != router._pipe_of(b"MSFT")
    for batch in (
        route_spans(a, starts, ends, 64),
        small(payloads, 64),
        router.route_python(payloads),
        router.route_numpy(payloads),
    ):
        assert twice in bytes(batch.runs[pipe]) and batch.routed == 3


@pytest.mark.parametrize("style", ["compact", "spaced"])
@pytest.mark.parametrize("ev", [b"Q", b"A", b"X"])
def test_any_one_byte_event_takes_the_fast_lane(style, ev):
    # quotes (Q) outnumber trades on the stocks feed: the same lane, the same bytes
    payloads = [
        p.replace(b'"ev":"T"', b'"ev":"' + ev + b'"').replace(b'"ev": "T"', b'"ev": "' + ev + b'"')
        for p in generate(profile="quiet", trades=400, symbols=50, style=style, seed=6)
    ]
    assert all(b'"T"' not in p for p in payloads)
    ref = Router(7).route_python(payloads)
    a, starts, ends = arena_of(payloads)
    assert same(route_spans(a, starts, ends, 7), ref)
    assert same(small(payloads, 7), ref) and same(
        small(payloads[:1], 7), Router(7).route_python(payloads[:1])
    )
    frames = route_frames(a, 0, int(ends[-1]), 16 << 20, 7)  # (arena_of: frames from 0)
    assert frames is not None and same(frames[0], ref)


@pytest.mark.parametrize(
    "first,seps",
    [
        ("[", [", ", ", ", ", "]),  # json.dumps' default style
        ("[ ", [", ", ", ", ", "]),  # a space after "[" too
        ("[", [", ", ",", ", "]),  # mixed separators
        ("[", [",", ", ", ", "]),  # the first one compact
        ("[", [", ", ",  ", ", "]),  # two spaces
        ("[", [", ", ",\n", ", "]),  # other whitespace
    ],
)
def test_separators_with_spaces_agree_or_decline(first, seps):
    objs = [trade(sym, q, spaced=True) for q, sym in enumerate(["AAPL", "MSFT", "SPY", "A"])]
    body = objs[0] + b"".join(sep.encode() + o for sep, o in zip(seps, objs[1:], strict=True))
    payloads = [first.encode() + body + b"]", message(objs[:2], spaced=True), message(objs[2:3])]
    ref = Router(5).route_python(payloads)
    assert ref.routed == 7 and not ref.malformed
    a, starts, ends = arena_of(payloads)
    got = route_spans(a, starts, ends, 5)
    assert got is None or same(got, ref)
    if len(set(seps)) == 1:  # one style: the span router takes it
        assert got is not None
    assert same(Router(5).route(payloads), ref)


@pytest.mark.parametrize(
    "odd",
    [
        b'{"ev": "T", "sym":"MSFT", "p": 1.5, "q": 9}',  # no space after this colon
        b'{"ev": "T", "sym" : "MSFT", "p": 1.5, "q": 9}',  # a space before it
        b'{"ev": "T", "symbol": "XX", "sym": "MSFT", "q": 9}',  # a key that starts like sym
        b'{"ev": "T", "sy": "XX", "sym": "MSFT", "q": 9}',
    ],
)
def test_spaced_objects_with_other_key_spacing_agree_or_decline(odd):
    # the spaced lane reads the symbol at byte 20 only after '{"ev": "X", "sym": "'
    payloads = [message([trade("AAPL", 1, spaced=True), odd, trade("SPY", 2, spaced=True)], True)]
    ref = Router(64).route_python(payloads)
    assert ref.routed == 3
    a, starts, ends = arena_of(payloads)
    got = route_spans(a, starts, ends, 64)
    assert got is None or same(got, ref)
    assert same(Router(64).route(payloads), ref)


def span_routers_agree(payloads, npipes: int, hash_name: str, routed: int):
    """route_spans and route_frames take the payloads, with Router.route_python's bytes; returns
    (that reference batch, the arena, starts, ends)."""
    ref = Router(npipes, hash=hash_name).route_python(payloads)
    assert ref.routed == routed and not ref.fallback
    a, starts, ends = arena_of(payloads)
    got = route_spans(a, starts, ends, npipes, hash_name)
    assert got is not None and same(got, ref)
    frames = route_frames(a, 0, int(ends[-1]), 16 << 20, npipes, hash_name)
    assert frames is not None and frames[0] is not None and same(frames[0], ref)
    return ref, a, starts, ends


def crypto(pair: str, q: int, spaced: bool = False, **extra) -> bytes:
    obj = {"ev": "XT", "pair": pair, "p": 1.5, "t": 1, "s": 0.25, "c": [1], "i": str(q), "x": 1}
    obj.update(extra)
    return json.dumps(obj, separators=(", ", ": ") if spaced else (",", ":")).encode()


@pytest.mark.parametrize("spaced", [False, True])
def test_crypto_pairs_take_the_span_router(spaced):
    pairs = ["BTC-USD", "ETH-USD", "X:SOLUSD", "X:1INCHUSD"]
    payloads = [
        message([crypto(p, q, spaced) for q, p in enumerate(pairs)], spaced),
        message([crypto("BTC-USD", 8, spaced)], spaced),
    ]
    a, starts, ends = arena_of(payloads)
    got = route_spans(a, starts, ends, 5)
    assert got is not None and same(got, Router(5).route_python(payloads))
    # a sym object in the batch: its "y" is its own key's, no rival to a pair
    payloads.append(message([trade("AAPL", 7, spaced=spaced), crypto("BTC-USD", 9)], spaced))
    a, starts, ends = arena_of(payloads)
    got = route_spans(a, starts, ends, 5)
    assert got is not None and same(got, Router(5).route_python(payloads))
    assert same(small(payloads, 5), Router(5).route_python(payloads))


@pytest.mark.parametrize("spaced", [False, True])
@pytest.mark.parametrize("hash_name", ["mixed", "compat"])
def test_two_byte_events_keyed_by_pair(hash_name, spaced):
    # crypto trades and quotes, forex aggregates: '{"ev":"XY","pair":"' (or json.dumps' default
    # style) on the pair lane, with pairs of 7 bytes and longer (a second word, the long rows)
    pairs = ["BTC-USD", "DOGE-USD", "X:1INCHUSD", "EUR/USD", "A"]
    quote = {"ev": "XQ", "pair": "ETH-USD", "bp": 1.5, "bs": 2, "ap": 1.6, "as": 3, "t": 1}
    quote = json.dumps(quote, separators=(", ", ": ") if spaced else (",", ":")).encode()
    payloads = [
        message(
            [crypto(p, q, spaced) for q, p in enumerate(pairs)]
            + [quote, aggregate("USD/CNH", 5, spaced)],
            spaced,
        ),
        message([aggregate("GBP/JPY", 6, spaced)], spaced),
    ]
    span_routers_agree(payloads, 7, hash_name, routed=8)


@pytest.mark.parametrize(
    "odd",
    [
        b'{"ev":"\\"","pair":"BTC-USD","p":1}',  # ev '"', escaped: the general way decodes it
        b'{"ev":"\\\\","pair":"BTC-USD","p":1}',  # ev a backslash, escaped
        b'{"ev":"XT","pair":"BTC-USD","sym":"AAPL"}',  # sym wins over pair
        b'{"ev":"X"","pair":"BTC-USD","p":1}',  # not JSON: malformed, the others kept
        b'{"ev": "\\"", "pair": "BTC-USD", "p": 1}',  # the same, json.dumps' default style
        b'{"ev": "XT", "pair": "BTC-USD", "sym": "AAPL"}',
        b'{"ev": "X"", "pair": "BTC-USD", "p": 1}',
    ],
)
def test_the_pair_lane_leaves_what_it_cannot_decide_to_the_general_way(odd):
    spaced = odd.startswith(b'{"ev": ')
    payloads = [message([crypto("ETH-USD", 0, spaced), odd, crypto("BTC-USD", 2, spaced)], spaced)]
    ref = Router(64).route_python(payloads)
    assert ref.routed == 3 or ref.malformed == 1
    a, starts, ends = arena_of(payloads)
    assert route_spans(a, starts, ends, 64) is None
    assert same(Router(64).route(payloads), ref)


def forex(name: str, q: int, spaced: bool = False, **extra) -> bytes:
    obj = {"ev": "C", "p": name, "x": 48, "a": 6.83366, "b": 6.83363, "t": 1536036818784 + q}
    obj.update(extra)
    return json.dumps(obj, separators=(", ", ": ") if spaced else (",", ":")).encode()


def aggregate(pair: str, q: int, spaced: bool = False) -> bytes:
    obj = {"ev": "CA", "pair": pair, "o": 1.1, "c": 1.2, "h": 1.3, "l": 1.0, "v": q, "s": 1}
    return json.dumps(obj, separators=(", ", ": ") if spaced else (",", ":")).encode()


@pytest.mark.parametrize("spaced", [False, True])
@pytest.mark.parametrize("hash_name", ["mixed", "compat"])
def test_forex_quotes_keyed_by_p_take_the_span_router(spaced, hash_name):
    # forex quotes (ev C) name the pair in p; with the forex aggregates (pair) in the same batch
    pairs = ["USD/CNH", "EUR/USD", "GBP/JPY", "C:XAUUSD"]
    payloads = [
        message([forex(p, q, spaced) for q, p in enumerate(pairs)], spaced),
        message([aggregate("USD/EUR", 1, spaced), forex("EUR/USD", 9, spaced)], spaced),
        message([forex("USD/CNH", 10, spaced)], spaced),
    ]
    ref, a, starts, ends = span_routers_agree(payloads, 5, hash_name, routed=7)
    assert same(small(payloads, 5, hash_name), ref)
    # an array that is not the balancer's bytearray arena: the same by numpy's own search
    copy = np.array(a)
    assert copy.base is None and same(route_spans(copy, starts, ends, 5, hash_name), ref)


@pytest.mark.parametrize(
    "odd",
    [
        forex("USD/CNH", 1, sym="AAPL"),  # sym wins over p
        forex("USD/CNH", 1, pair="EUR/USD"),  # and pair does
        forex("USD/CNH", 1, note="\\u0070air"),  # escaped: the general way decodes it
        b'{"ev":"CA","p":"USD/CNH","x":1}',  # p names the pair only in a quote (C)
        b'{"ev":"status","pair":"USD/CNH","message":"x"}',  # a status, whatever its keys
        b'{"ev":"status","sym":"AAPL","message":"x"}',
    ],
)
def test_a_forex_quote_with_another_instrument_key_goes_the_general_way(odd):
    payloads = [message([forex("EUR/USD", 0), odd])]
    ref = Router(64).route_python(payloads)
    a, starts, ends = arena_of(payloads)
    assert route_spans(a, starts, ends, 64) is None
    assert small(payloads, 64) is None
    assert same(Router(64).route(payloads), ref)


def test_a_pair_object_with_a_sym_key_goes_by_sym():
    # the placement rule: sym, else pair -- wherever sym is; escaped or not
    for odd in (crypto("BTC-USD", 1, sym="AAPL"), crypto("BTC-USD", 1, note="\\u0079")):
        payloads = [message([crypto("ETH-USD", 0), odd])]
        a, starts, ends = arena_of(payloads)
        assert route_spans(a, starts, ends, 64) is None  # the general way decides
        assert Router(64).route(payloads).routed == 2
    # a "y" or backslash only in a frame header (a 121- or 92-byte payload's length) is fine
    for size in (0x79, 0x5C):
        base = message([crypto("ETH-USD", 0)])
        payloads = [message([crypto("ETH-USD", 0, n="x" * (size - len(base) - 7))])] * 2
        assert len(payloads[0]) == size
        a, starts, ends = arena_of(payloads)
        assert (a[int(ends[0]) : int(starts[1])] == size).any()
        got = route_spans(a, starts, ends, 5)
        assert got is not None and same(got, Router(5).route_python(payloads))

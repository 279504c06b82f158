"""Router behaviour on hand-written feeds, each case through both paths."""

from __future__ import annotations

import itertools
import json
import struct

import pytest

from tb.route import DEFAULT_NUMPY_MIN_BYTES, RouteBatch, RouteError, Router
from tb.route.hashing import pipe_compat, pipe_mixed

NPIPES = 8


def record(obj: bytes) -> bytes:
    return struct.pack("<I", len(obj)) + obj


def snapshot(batch: RouteBatch) -> tuple:
    runs = tuple(bytes(r) if r is not None and len(r) else None for r in batch.runs)
    return (
        runs,
        tuple(batch.counts),
        batch.events,
        batch.routed,
        tuple(json.dumps(s, sort_keys=True) for s in batch.statuses),
        batch.fallback,
        batch.no_symbol,
        batch.malformed,
        tuple(batch.errors),
    )


def route_both(payloads, npipes=NPIPES, hash="mixed") -> RouteBatch:
    """Route through both paths, assert they agree byte for byte, return the Python batch."""
    py = Router(npipes, hash=hash).route_python(payloads)
    nb = Router(npipes, hash=hash).route_numpy(payloads)
    assert snapshot(py) == snapshot(nb)
    assert sum(py.counts) == py.routed
    assert py.events == py.routed + len(py.statuses) + py.no_symbol
    return py


def run_of(batch: RouteBatch, sym: bytes, npipes=NPIPES) -> bytes:
    return bytes(batch.runs[pipe_mixed(sym, npipes)] or b"")


def test_record_format_is_u32_le_length_and_original_bytes():
    obj = b'{"ev":"T","sym":"AAPL","i":"1","x":4,"p":187.5,"s":100,"t":1700000000000,"z":3}'
    batch = route_both([b"[" + obj + b"]"])
    pipe = pipe_mixed(b"AAPL", NPIPES)
    assert bytes(batch.runs[pipe]) == len(obj).to_bytes(4, "little") + obj
    assert batch.counts[pipe] == 1 and batch.routed == 1 and batch.fallback == 0
    assert all(r is None for i, r in enumerate(batch.runs) if i != pipe)


def test_compat_hash_uses_the_c_mapping():
    objs = [b'{"ev":"T","sym":"%s"}' % s for s in (b"A", b"B", b"AAPL", b"MSFT")]
    batch = route_both([b"[" + b",".join(objs) + b"]"], npipes=32, hash="compat")
    for s, obj in zip((b"A", b"B", b"AAPL", b"MSFT"), objs, strict=True):
        assert record(obj) in bytes(batch.runs[pipe_compat(s, 32)])


@pytest.mark.parametrize(
    "text",
    [
        b'[{"ev": "T", "sym": "AAPL", "p": 1.5}]',
        b'[ { "ev" : "T" , "sym" : "AAPL" , "p" : 1.5 } ]',
        b'\t[\t{\t"ev"\t:\t"T",\t"sym":\t"AAPL",\t"p":1.5\t}\t]\t',
        b'\n[\n  {\n    "ev": "T",\n    "sym": "AAPL",\n    "p": 1.5\n  }\n]\n',
        b'\r\n[{"ev":"T",\r\n"sym"\r\n:\r\n"AAPL","p":1.5}]\r\n',
    ],
)
def test_whitespace_is_fast_and_exact(text):
    batch = route_both([text])
    obj = text[text.index(b"{") : text.rindex(b"}") + 1]
    assert run_of(batch, b"AAPL") == record(obj)
    assert batch.fallback == 0


@pytest.mark.parametrize("seps", [[","], [", "], [",\n  "], [",", ", "], [", ", ",", ",\t"]])
def test_separators_uniform_and_mixed(seps):
    objs = [b'{"ev":"T","sym":"S%d","p":%d}' % (i % 3, i) for i in range(7)]
    text = objs[0] + b"".join(seps[i % len(seps)].encode() + o for i, o in enumerate(objs[1:]))
    batch = route_both([b"[" + text + b"]"])
    assert batch.fallback == 0 and batch.routed == 7
    for k in range(3):  # (symbols that share a pipe share its run, in feed order)
        pipe = pipe_mixed(b"S%d" % k, NPIPES)
        mine = [o for i, o in enumerate(objs) if pipe_mixed(b"S%d" % (i % 3), NPIPES) == pipe]
        assert run_of(batch, b"S%d" % k) == b"".join(record(o) for o in mine)


def test_every_key_order():
    trade = {"ev": "T", "sym": "MSFT", "i": "77", "x": 4, "p": 410.25, "c": [12, 37], "t": 17}
    payloads, objs = [], []
    for keys in itertools.permutations(trade):
        for sep in ((",", ":"), (", ", ": ")):
            obj = json.dumps({k: trade[k] for k in keys}, separators=sep).encode()
            objs.append(obj)
            payloads.append(b"[" + obj + b"]")
    batch = route_both(payloads)
    assert batch.fallback == 0 and batch.routed == len(objs)
    assert run_of(batch, b"MSFT") == b"".join(record(o) for o in objs)


@pytest.mark.parametrize("n", [1, 5, 16, 31, 32, 33, 40, 100])
def test_long_symbols(n):
    sym = ("O:" + "X" * n)[:n].encode()
    obj = b'{"ev":"T","sym":"%s","p":1}' % sym
    batch = route_both([b"[" + obj + b"]"])
    assert run_of(batch, sym) == record(obj)
    assert batch.fallback == (1 if n > 32 else 0)


def test_empty_arrays_and_empty_batch():
    batch = route_both([b"[]", b" [ ] ", b"[\n]"])
    assert batch.events == 0 and batch.malformed == 0 and batch.runs == [None] * NPIPES
    empty = route_both([])
    assert empty.events == 0 and empty.counts == [0] * NPIPES


def test_escaped_symbol_hashes_the_decoded_utf8():
    obj = b'{"ev":"T","sym":"A\\u0042","p":1}'
    batch = route_both([b'[{"ev":"T","sym":"AB"},' + obj + b"]"])
    assert run_of(batch, b"AB") == record(b'{"ev":"T","sym":"AB"}') + record(obj)
    assert batch.fallback == 2  # the whole message took the slow path


def test_escape_elsewhere_keeps_raw_symbol_and_bytes():
    obj = b'{"ev":"T","sym":"IBM","note":"say \\"hi\\" \\\\ }{"}'
    batch = route_both([b"[" + obj + b"]"])
    assert run_of(batch, b"IBM") == record(obj)
    assert batch.fallback == 1


def test_braces_inside_strings():
    objs = [b'{"ev":"T","sym":"BRK","z":"}"}', b'{"ev":"T","note":"{x}","sym":"BRK"}']
    batch = route_both([b"[" + b",".join(objs) + b"]"])
    assert run_of(batch, b"BRK") == b"".join(map(record, objs))


def test_symbol_with_braces_and_spaces():
    obj = b'{"ev":"T","sym":"A {B} C"}'
    batch = route_both([b"[" + obj + b"]"])
    assert run_of(batch, b"A {B} C") == record(obj)


def test_nested_objects_are_routed_whole():
    obj = b'{"ev":"T","meta":{"sym":"WRONG","deep":{"a":[1,{"b":2}]}},"sym":"RIGHT"}'
    batch = route_both([b'[{"ev":"T","sym":"RIGHT"},' + obj + b"]"])
    assert run_of(batch, b"RIGHT") == record(b'{"ev":"T","sym":"RIGHT"}') + record(obj)
    assert batch.fallback == 2


def test_status_is_returned_never_routed():
    feed = [
        b'[{"ev":"status","status":"connected","message":"Connected Successfully"}]',
        b'[{"ev":"T","sym":"A"},{"ev": "status", "status": "success", "message": "subscribed to: T.*"}'
        b',{"ev":"T","sym":"B"}]',
        b'[{"status":"max_connections","ev":"status","message":"Maximum number of connections"}]',
    ]
    batch = route_both(feed)
    assert [s["status"] for s in batch.statuses] == ["connected", "success", "max_connections"]
    assert batch.routed == 2 and batch.events == 5 and batch.fallback == 0
    assert b"status" not in b"".join(bytes(r) for r in batch.runs if r)


def test_status_in_slow_message_keeps_feed_order():
    feed = [
        b'[{"ev":"status","status":"one"}]',
        b'[{"ev":"status","status":"two","m":"\\u00e9"}]',  # escape: slow path
        b'[{"ev":"status","status":"three"}]',
    ]
    batch = route_both(feed)
    assert [s["status"] for s in batch.statuses] == ["one", "two", "three"]


def test_crypto_and_forex_instruments():
    objs = {
        b"BTC-USD": b'{"ev":"XT","pair":"BTC-USD","p":91000.5,"s":0.01,"x":1}',
        b"ETH-USD": b'{"ev":"XQ","pair":"ETH-USD","bp":3000}',
        b"EUR/USD": b'{"ev":"C","p":"EUR/USD","a":1.1,"b":1.09,"x":48}',
        b"GBP/USD": b'{"ev":"CA","pair":"GBP/USD","o":1.25,"c":1.26}',
    }
    batch = route_both([b"[" + b",".join(objs.values()) + b"]"])
    for sym, obj in objs.items():
        assert record(obj) in run_of(batch, sym)
    assert batch.fallback == 0 and batch.no_symbol == 0


def test_price_p_is_not_an_instrument_outside_forex_quotes():
    batch = route_both([b'[{"ev":"Q","p":"ABC","bp":1}]'])  # a string p on a non-C event
    assert batch.no_symbol == 1 and batch.routed == 0


def test_no_symbol_is_counted():
    batch = route_both([b'[{"ev":"T","x":1},{"ev":"C","a":1},{}]', b'[{"ev":"T","sym":5}]'])
    assert batch.no_symbol == 4 and batch.routed == 0 and batch.events == 4


def test_sym_as_a_value_or_duplicate_key_goes_slow_but_right():
    a = b'{"ev":"T","note":"sym","sym":"AAA"}'
    # a key given twice: tb takes the first on every path (the span router reads the first
    # "sym" without looking further; the slow path decodes first-wins to agree with it)
    b = b'{"ev":"T","sym":"OLD","sym":"NEW"}'
    batch = route_both([b"[" + a + b"]", b"[" + b + b"]"])
    assert run_of(batch, b"AAA") == record(a)
    assert run_of(batch, b"OLD") == record(b)
    assert batch.fallback == 2


@pytest.mark.parametrize(
    "payload,routed",
    [
        (b"garbage", 0),
        (b"", 0),
        (b"\xff\xfe\x00", 0),
        (b'{"ev":"T","sym":"A"}', 1),  # not an array, the object still routed
        (b'[{"ev":"T","sym":"A"},{"ev":"T","sym":"B"},{"ev":"T","sy', 2),  # truncated
        (b'[{"ev":"T","sym":"A"},"oops",{"ev":"T","sym":"B"}]', 2),
        (b'[{"ev":"T","sym":"A"}]]', 1),
        (b'[{"ev":"T","sym":"A"}', 1),
        (b'[{"ev":"T","sym":"A\xff"}]', 0),  # not UTF-8
        (b'"just a string"', 0),
        (b"[1,2,3]", 0),
    ],
)
def test_bad_payloads_are_counted_not_raised(payload, routed):
    good = b'[{"ev":"T","sym":"OK"}]'
    batch = route_both([good, payload, good])
    assert batch.malformed == 1
    assert len(batch.errors) == 1 and batch.errors[0].startswith("payload 1: ")
    assert batch.routed == routed + 2
    assert run_of(batch, b"OK").count(record(b'{"ev":"T","sym":"OK"}')) == 2


def test_grammar_inside_a_flat_object_is_not_checked_on_the_fast_path():
    # A documented limit: the scanners check structure (array, braces, quotes, separators, the
    # instrument key) but not every byte between an object's tokens; such bytes are passed on.
    obj = b'{"ev":"T" "sym":"B",}'
    batch = route_both([b"[" + obj + b"]"])
    assert run_of(batch, b"B") == record(obj) and batch.malformed == 0


def test_errors_are_capped_but_counted():
    batch = route_both([b"nope"] * 50)
    assert batch.malformed == 50 and 1 <= len(batch.errors) <= 10


def test_control_bytes_take_the_slow_path():
    obj = b'{"ev":"T","sym":"A","z":"\x01"}'  # raw control byte: invalid JSON
    batch = route_both([b"[" + obj + b"]"])
    assert batch.malformed == 1 and batch.routed == 0


def test_unicode_symbols_raw_and_escaped_agree():
    raw = '{"ev":"T","sym":"Ünï日本"}'.encode()
    esc = json.dumps({"ev": "T", "sym": "Ünï日本"}, separators=(",", ":")).encode()
    assert b"\\u" in esc
    batch = route_both([b"[" + raw + b"]", b"[" + esc + b"]"])
    assert run_of(batch, "Ünï日本".encode()) == record(raw) + record(esc)


def test_feed_order_per_pipe_across_messages():
    syms = [b"A", b"B", b"C", b"D", b"E", b"F"]
    payloads, objs = [], []
    for m in range(40):
        message = []
        for k in range(m % 5 + 1):
            sym = syms[(m * 7 + k * 3) % len(syms)]
            obj = b'{"ev":"T","sym":"%s","q":%d}' % (sym, m * 10 + k)
            if m % 9 == 0:
                obj = obj[:-1] + b',"e":"\\n"}'  # some messages go the slow way
            message.append(obj)
            objs.append((sym, obj))
        payloads.append(b"[" + b",".join(message) + b"]")
    batch = route_both(payloads, npipes=3)
    assert batch.fallback > 0
    for p in range(3):
        want = b"".join(record(o) for s, o in objs if pipe_mixed(s, 3) == p)
        assert bytes(batch.runs[p] or b"") == want


def test_payload_types():
    text = b'[{"ev":"T","sym":"AAPL"}]'
    batch = route_both([text, bytearray(text), memoryview(text), memoryview(b"xx" + text)[2:]])
    assert batch.routed == 4 and batch.fallback == 0


def test_route_picks_the_path_by_size_and_keeps_totals():
    text = b'[{"ev":"T","sym":"AAPL"},{"ev":"status","status":"x"},{"ev":"T"}]'
    router = Router(4, numpy_min_bytes=len(text) * 2)
    small = router.route([text])
    big = router.route([text, text])
    assert isinstance(small.runs[pipe_mixed(b"AAPL", 4)], bytearray)
    assert isinstance(big.runs[pipe_mixed(b"AAPL", 4)], memoryview)
    t = router.totals
    assert (t.batches, t.routed, t.statuses, t.no_symbol, t.events) == (2, 3, 3, 3, 9)
    assert sum(t.per_pipe) == 3 and t.per_pipe[pipe_mixed(b"AAPL", 4)] == 3
    assert Router(4).numpy_min_bytes == DEFAULT_NUMPY_MIN_BYTES


@pytest.mark.parametrize(
    "kwargs",
    [{"npipes": 0}, {"npipes": -1}, {"npipes": 2.0}, {"npipes": 4, "hash": "md5"}]
    + [{"npipes": 4, "numpy_min_bytes": -1}],
)
def test_bad_arguments_raise_route_error(kwargs):
    npipes = kwargs.pop("npipes")
    with pytest.raises(RouteError):
        Router(npipes, **kwargs)


def test_many_pipes():
    objs = [b'{"ev":"T","sym":"S%d"}' % i for i in range(3000)]
    batch = route_both([b"[" + b",".join(objs) + b"]"], npipes=70000)
    assert batch.routed == 3000 and sum(1 for r in batch.runs if r) > 2900


@pytest.mark.parametrize(
    "payload",
    [
        b'[{"ev":"T","sym"sym":"A","q":"B""}]',
        b'[{"ev":"T","x":"sym"sym":"A"}]',
        b'[{"ev":"T","pair"pair":"A","q":"B""}]',
        b'[{"ev":"T","a":"b"sym":"X"}]',
        b'[{"a":"b"sym"":1,"sym":"Y"}]',
        b'[{"ev":"ev":"status"}]',
        b'[{"ev":"C","ev":"T","p":"EUR/USD"}]',
        b'[{"ev":"C","p":"EUR/USD","p":"X"}]',
        b'[{"ev":"C","p":1.5,"x":"p"}]',
        b'[{"ev":"C","p":"' + b"E" * 40 + b'"}]',
        b'[{"ev":"status","sym":"' + b"L" * 40 + b'"}]',
        b'[{"ev"  :  "status", "status":"x"}]',
        b'[{"ev":\t"C", "p" :"EUR/USD"}]',
        b'[{"sym":"A"}, {"sym" :"B"} ,{"sym":  "C"}]',
        b'[{"sym":"A"}]x',
        b'x[{"sym":"A"}]',
        b'[{"sym":"A"},]',
        b'[,{"sym":"A"}]',
        b'[{"sym":"A"}{"sym":"B"}]',
        b'[{"sym":"A"},,{"sym":"B"}]',
        b'["x",{"sym":"A"}]',
        b'[{"sym":"A"},"x"]',
        b'[{"sym":"A","z":"' + b" " * 60 + b'"}]',
        b'[{"sym"' + b" " * 60 + b':"A"}]',
        b'[{"sym":' + b"\n" * 60 + b'"A"}]',
    ],
)
def test_both_paths_agree_on_tricky_bytes(payload):
    batch = route_both([payload, b'[{"ev":"T","sym":"OK"}]'])
    assert batch.routed >= 1


@pytest.mark.parametrize("method", ["route", "route_python", "route_numpy"])
def test_non_bytes_payload_is_a_route_error(method):
    with pytest.raises(RouteError):
        getattr(Router(2), method)(['[{"ev":"T","sym":"A"}]'])

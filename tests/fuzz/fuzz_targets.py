"""Fuzz targets: one function per target that takes arbitrary bytes and checks tb's invariants.

Theory of operation. The hypothesis tests (tests/fuzz/test_*.py), the corpus replay
(tests/fuzz/test_corpus.py) and the atheris harness (tools/fuzz.py) all drive the same functions
in :data:`TARGETS`. Each decodes its input as its docstring says (a few leading parameter bytes,
then the data), runs the code under test and raises :class:`Violation` when an invariant breaks.
Any exception that escapes and is not a Violation is a bug as well: it is not the package's own
error family. A corpus file is one such input, so a found case is replayed forever after.

The invariants are the ones the modules document: tb.ws raises only WebSocketError and gives the
same messages however the stream is split; scan_data_frames + Connection.receive (the
balancer's combination) gives what Connection.receive alone gives; the handshake parsers raise
only InvalidHandshake; Session.on_status raises only FeedError; the routers never raise, agree
with each other, account for every event, and give the same output however a batch is split;
read_capture raises only CaptureError.
"""

from __future__ import annotations

import json
import logging
import os
import random
import struct
import tempfile
from codecs import utf_8_decode

import numpy as np
from harness import reference_route

from tb.capture import MAGIC, CaptureError, read_capture
from tb.feed import FeedError, Phase, Session
from tb.route import SPAN_PAD, RouteBatch, Router, Scratch
from tb.route.hashing import HASHES
from tb.route.spans import route_frames, route_spans
from tb.ws import (
    Connection,
    InvalidHandshake,
    ProtocolError,
    State,
    WebSocketError,
    parse_client_response,
    parse_server_request,
    reject_response,
    server_response,
)
from tb.ws.scan import as_list, scan_data_frames, text_frames

__all__ = ["TARGETS", "Violation"]

MAX_MESSAGES = (1 << 20, 200, 125, 10)
HASH_NAMES = ("mixed", "compat")
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # the RFC 6455 example key
SECRET = "k3y-N0T-1N-L0GS"  # the session's API key: must never show up in a log or an error
SEP = 0xFF  # separates the payloads of router inputs (never a byte of valid UTF-8)


class Violation(AssertionError):
    """An invariant of the code under test does not hold for this input."""


#: Bugs already reported (each has an xfail(strict=True) test in test_known_bugs.py). The
#: targets let these through so that fuzzing goes on past them; set TB_FUZZ_STRICT=1 to stop.
# Bugs the fuzzers found are fixed; a new one is listed here (name -> description) while it is
# open, so fuzzing can go past it (TB_FUZZ_STRICT=1 stops at it anyway).
KNOWN_BUGS: dict[str, str] = {}
STRICT = os.environ.get("TB_FUZZ_STRICT") == "1"


def known_bug(name: str, exc: BaseException) -> bool:
    """Whether `exc` is the already-reported bug `name` (and is to be let through)."""
    if STRICT:
        return False
    if name == "handshake-nonascii-key":
        return type(exc) is ValueError and "only ASCII characters" in str(exc)
    if name == "handshake-status-digit":
        return type(exc) is ValueError and "invalid literal for int()" in str(exc)
    if name == "spans-empty-batch":
        return type(exc) is ValueError and "zero-size array" in str(exc)
    return False


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Violation(what)


def _param(data: bytes, i: int) -> int:
    return data[i] if len(data) > i else 0


# -- tb.ws.Connection -----------------------------------------------------------------------


def sent_frames(out: bytes) -> list[tuple[int, bytes]]:
    """(first header byte, unmasked payload) of each frame a Connection queued."""
    frames, at = [], 0
    while at < len(out):
        b0, b1 = out[at], out[at + 1]
        n, at = b1 & 0x7F, at + 2
        if n == 126:
            n, at = struct.unpack_from("!H", out, at)[0], at + 2
        elif n == 127:
            n, at = struct.unpack_from("!Q", out, at)[0], at + 8
        key = b"\x00" * 4
        if b1 & 0x80:
            key, at = out[at : at + 4], at + 4
        body = bytes(c ^ key[i & 3] for i, c in enumerate(out[at : at + n]))
        frames.append((b0, body))
        at += n
    return frames


def feed_connection(
    stream: bytes, cuts: list[int], *, client: bool, max_message: int, utf8: bool = True
) -> tuple:
    """Feed `stream` to one Connection in pieces ending at `cuts`, as a transport would.

    Returns everything observable: messages, counters, state, close code, the error (class and
    close code), the frames queued for the peer and how many bytes were left unconsumed.
    """
    conn = Connection(client=client, max_message=max_message, validate_utf8=utf8)
    messages: list[bytes] = []
    tail, done, error = b"", 0, None
    for cut in [*cuts, len(stream)]:
        if cut < done:
            continue
        buf, done = tail + stream[done:cut], cut
        try:
            used = conn.receive(memoryview(buf))
        except WebSocketError as exc:
            check(isinstance(exc, ProtocolError), f"receive raised {exc!r}, not a ProtocolError")
            check(conn.failure is exc, "the failure is not recorded on the connection")
            check(conn.state is not State.OPEN, "still OPEN after a protocol error")
            error = (type(exc).__name__, exc.close_code)
            messages += [bytes(m) for m in conn.messages]
            break
        check(0 <= used <= len(buf), f"receive consumed {used} of {len(buf)} bytes")
        messages += [bytes(m) for m in conn.messages]
        conn.messages.clear()
        tail = buf[used:]
    if error is None:
        # at most one frame's header and payload waits: a data frame's up to max_message + 1
        # bytes (one past it is how an oversized one is seen), a control frame's up to 125
        longest = max(max_message + 1, 125)
        check(len(tail) < 2 + 8 + 4 + longest or not tail, "unbounded unconsumed tail")
    left = len(tail) if error is None else None
    counters = (conn.text_messages, conn.binary_messages, conn.pings, conn.pongs)
    check(counters[0] + counters[1] == len(messages), "message counters disagree with messages")
    sent = sent_frames(conn.data_to_send())
    return (
        messages,
        counters,
        conn.state,
        conn.close_code,
        conn.close_reason,
        error,
        sent,
        left,
        conn.in_fragmented_message,
    )


def split_plans(n: int, seed: int, count: int = 3) -> list[list[int]]:
    """Cut points to feed n bytes by: one byte at a time, then `count` random plans."""
    rng = random.Random(seed)
    plans = [list(range(1, n))] if n <= 2048 else []
    for _ in range(count):
        k = rng.randint(1, 6)
        plans.append(sorted(rng.randint(0, n) for _ in range(k)))
    return plans


def ws(data: bytes, plans: list[list[int]] | None = None) -> None:
    """Connection.receive: only ProtocolError, the same outcome at every split.

    data[0]: bit 0 server role, bits 1-2 max_message (MAX_MESSAGES), bit 3 validate_utf8 off;
    data[1]: seed of the split plans; data[2:]: the bytes the peer sent.
    """
    flags, seed, stream = _param(data, 0), _param(data, 1), data[2:]
    opts = dict(
        client=not flags & 1, max_message=MAX_MESSAGES[(flags >> 1) & 3], utf8=not flags & 8
    )
    whole = feed_connection(stream, [], **opts)
    for cuts in plans if plans is not None else split_plans(len(stream), seed):
        got = feed_connection(stream, cuts, **opts)
        check(got == whole, f"split at {cuts[:8]} gives {got!r:.300} instead of {whole!r:.300}")


# -- scan_data_frames + Connection.receive (the balancer's receive path) ----------------------


def _ints(seq) -> list[int]:
    """scan_data_frames returns lists or numpy arrays (whichever its strategy had)."""
    return [int(x) for x in seq]


def _check_spans(
    s: list, e: list, o: list, stop: int, pos: int, end: int, max_message: int
) -> None:
    check(len(s) == len(e) == len(o), "span arrays of different lengths")
    check(pos <= stop <= end, f"scan stopped at {stop}, outside [{pos}, {end}]")
    at = pos
    for a, b, op in zip(s, e, o, strict=True):
        check(at + 2 <= a <= b <= stop, f"span {a}:{b} does not follow {at} (stop {stop})")
        check(b - a <= max_message, f"span {a}:{b} exceeds max_message {max_message}")
        check(op in (1, 2), f"scanned opcode {op}")
        at = b
    check(not s or at == stop, f"scan stopped at {stop}, the last span ends at {at}")
    check(s or stop == pos, f"scan found no frame but stopped at {stop}, not {pos}")


def _check_text_frames(a, view: memoryview, start: int, end: int, max_message: int) -> None:
    """text_frames (a trickle's shortcut) finds what scan_data_frames finds when the bytes are
    exactly a run of text frames with 7- or 16-bit lengths, and nothing otherwise."""
    got = text_frames(view, start, end, max_message)
    starts, ends, ops, stop = scan_data_frames(a, view, start, end, max_message)
    starts, ends, ops = _ints(starts), _ints(ends), _ints(ops)
    heads = [s - e for s, e in zip(starts, [start, *ends], strict=False)]
    whole = bool(starts) and stop == end and set(ops) == {1} and max(heads) <= 4
    want = [bytes(view[s:e]) for s, e in zip(starts, ends, strict=True)] if whole else None
    got = got if got is None else [bytes(p) for p in got]
    check(got == want, f"text_frames at {start}..{end}: {got!r:.80} != {want!r:.80}")


def feed_balancer(stream: bytes, cuts: list[int], *, max_message: int, junk: int) -> tuple:
    """The balancer's receive path: the plain data frames by route_frames (a large receive in
    the balancer; every one here) or else scan_data_frames, Connection.receive the rest.

    The arena holds the bytes not yet received after `end` (junk=0), or 0xFF bytes (junk=1):
    the scanners may look past `end` and must not be misled by what is there.
    """
    pad = 16 + SPAN_PAD
    arena = bytearray(stream + b"\xff" * pad if junk == 0 else b"\xff" * (len(stream) + pad))
    a, view = np.frombuffer(arena, np.uint8), memoryview(arena)
    conn = Connection(max_message=max_message)
    messages: list[bytes] = []
    texts, start, end, error = 0, 0, 0, None
    for cut in [*cuts, len(stream)]:
        if cut < end:
            continue
        arena[end:cut], end = stream[end:cut], cut
        if conn.state is State.OPEN and not conn.in_fragmented_message:
            _check_text_frames(a, view, start, end, max_message)
            framed = route_frames(a, start, end, max_message, 3)
            if framed is not None:
                starts, ends, stop = framed[1].tolist(), framed[2].tolist(), framed[3]
                ops = [1] * len(starts)
            else:
                starts, ends, ops, stop = scan_data_frames(a, view, start, end, max_message)
            starts, ends, ops = _ints(starts), _ints(ends), _ints(ops)
            check(isinstance(stop, int | np.integer), f"scan stopped at {stop!r}")
            _check_spans(starts, ends, ops, stop, start, end, max_message)
            for s, e, op in zip(starts, ends, ops, strict=True):
                if op == 1:
                    try:
                        utf_8_decode(view[s:e], "strict", True)
                    except UnicodeDecodeError:
                        error = ("InvalidPayload", 1007)
                        break
                    texts += 1
                messages.append(bytes(view[s:e]))
            if error:
                break
            start = stop
        try:
            used = conn.receive(view[start:end])
        except ProtocolError as exc:
            error = (type(exc).__name__, exc.close_code)
            messages += [bytes(m) for m in conn.messages]
            break
        messages += [bytes(m) for m in conn.messages]
        conn.messages.clear()
        start += used
    return messages, texts + conn.text_messages, error


def scan(data: bytes, plans: list[list[int]] | None = None) -> None:
    """scan_data_frames + Connection.receive == Connection.receive alone, at every split.

    data[0]: bits 0-1 max_message (MAX_MESSAGES), bit 2 junk after `end` (0: the stream's
    next bytes, 1: 0xFF); data[1]: seed of the split plans; data[2:]: what the server sent.
    """
    flags, seed, stream = _param(data, 0), _param(data, 1), data[2:]
    max_message = MAX_MESSAGES[flags & 3]
    ref = feed_connection(stream, [], client=True, max_message=max_message)
    want = (ref[0], ref[1][0], ref[5])
    for cuts in [[], *(plans if plans is not None else split_plans(len(stream), seed))]:
        got = feed_balancer(stream, cuts, max_message=max_message, junk=(flags >> 2) & 1)
        check(got == want, f"scan+receive split at {cuts[:8]}: {got!r:.300} != {want!r:.300}")


# -- tb.ws.handshake ------------------------------------------------------------------------


def _parse(role: int, buf: bytes, protocols: tuple[str, ...]):
    try:
        if role == 0:
            return "ok", parse_client_response(buf, KEY, protocols=protocols)
        return "ok", parse_server_request(buf)
    except ValueError as exc:
        if role == 1 and known_bug("handshake-nonascii-key", exc):
            return "error", 400
        if role == 0 and known_bug("handshake-status-digit", exc):
            return "error", None
        raise
    except InvalidHandshake as exc:
        check(exc.status is None or 0 <= exc.status <= 999, f"status {exc.status!r}")
        if role == 1:
            check(exc.status in (400, 426), f"server role rejects with status {exc.status}")
            reject_response(exc.status, str(exc))
        return "error", exc.status


def handshake(data: bytes, plans: list[list[int]] | None = None) -> None:
    """The handshake parsers: only InvalidHandshake; incremental; a request round-trips.

    data[0]: bit 0 role (0: parse_client_response with KEY, 1: parse_server_request), bit 1
    offer the subprotocol "chat"; data[1:]: the header bytes received.
    """
    role, protocols, buf = _param(data, 0) & 1, ("chat",) if _param(data, 0) & 2 else (), data[1:]
    kind, value = whole = _parse(role, buf, protocols)
    end = buf.find(b"\r\n\r\n")
    if kind == "ok":
        consumed = value if role == 0 else value[0]
        check(consumed in (0, end + 4), f"consumed {consumed}, the header block ends at {end}")
        check(consumed or end < 0 or end > 16 * 1024, "a complete header block returned 0")
    # prefixes: incomplete ones return 0 (or the same error), complete ones the same outcome
    rng = random.Random(len(buf))
    for k in {0, len(buf) - 1, end + 3, end + 4, rng.randint(0, len(buf))}:
        if 0 <= k < len(buf):
            got = _parse(role, buf[:k], protocols)
            if end < 0 or k < end + 4:
                check(got[0] == "error" or got[1] in (0, (0, None)), f"prefix {k} gave {got}")
            else:
                check(_same_parse(got, whole), f"prefix {k} gave {got}, the whole {whole}")
    check(_same_parse(_parse(role, buf + b"\x81\x05hello", protocols), whole), "bytes after")
    if role == 1 and kind == "ok" and value[1] is not None:
        response = server_response(value[1])
        key = value[1].headers["sec-websocket-key"]
        got = parse_client_response(response + b"\x81\x00", key)
        check(got == len(response), f"our own 101 response is refused or misread ({got})")


def _same_parse(a, b) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "error" or isinstance(a[1], int):
        return a[1] == b[1]
    return a[1][0] == b[1][0] and (a[1][1] is None) == (b[1][1] is None)


# -- tb.feed.Session ------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


_ORDER = [Phase.GREETING, Phase.AUTHENTICATING, Phase.SUBSCRIBING, Phase.STREAMING]


def statuses_of(data: bytes, via_router: bool) -> list:
    """The status dicts a session gets from `data` (lines of JSON; other lines as strings)."""
    out: list = []
    for line in data.split(b"\n"):
        if via_router:
            out += Router(1).route_python([line]).statuses
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            value = line.decode("latin-1")
        if isinstance(value, list):
            out += [v if isinstance(v, dict) else {"status": v} for v in value]
        else:
            out.append(value if isinstance(value, dict) else {"status": value})
    return out


def run_session(statuses: list, topics: str = "T.*") -> None:
    """Feed status dicts to a Session: only FeedError, phases move forward, the key stays secret."""
    log = logging.getLogger("tb.feed")
    records, level = _Records(), log.level
    log.addHandler(records)
    log.setLevel(logging.DEBUG)
    session = Session(SECRET, "--key", topics)
    secret_in_input = SECRET in repr(statuses)
    try:
        phase = 0
        for status in statuses:
            try:
                session.on_status(status)
            except FeedError as exc:
                check(secret_in_input or SECRET not in str(exc), "the key is in an error")
                check("--key" in str(exc) or "timed out" in str(exc), f"unclear error {exc}")
                break
            now = _ORDER.index(session.phase)
            check(now >= phase, f"phase went back from {_ORDER[phase]} to {session.phase}")
            phase = now
        actions = [json.loads(m)["action"] for m in session.outgoing]
        check(actions in ([], ["auth"], ["auth", "subscribe"]), f"sent {actions}")
        check(len(actions) == min(phase, 2), f"phase {session.phase} after sending {actions}")
        check(SECRET not in repr(session), "the key is in the session's repr")
        if not secret_in_input:
            check(not any(SECRET in line for line in records.lines), "the key was logged")
    finally:
        log.removeHandler(records)
        log.setLevel(level)


def session(data: bytes) -> None:
    """Session.on_status on whatever the server sends: only FeedError/AuthFailed.

    data[0]: bit 0 take the statuses the Router extracts (else every decoded line), bit 1
    subscribe to two topics; data[1:]: lines of (mostly) JSON.
    """
    flags = _param(data, 0)
    topics = "T.AAPL,T.MSFT" if flags & 2 else "T.*"
    run_session(statuses_of(data[1:], via_router=bool(flags & 1)), topics)


# -- tb.route.Router ------------------------------------------------------------------------


def snapshot(batch: RouteBatch, errors: bool = True) -> tuple:
    return (
        tuple(bytes(r) if r is not None and len(r) else b"" for r in batch.runs),
        tuple(batch.counts),
        (batch.events, batch.routed, batch.fallback, batch.no_symbol, batch.malformed),
        tuple(json.dumps(s, sort_keys=True, default=repr) for s in batch.statuses),
        tuple(batch.errors) if errors else (),
    )


def records_of(run) -> list[bytes]:
    data, out, at = bytes(run or b""), [], 0
    while at < len(data):
        check(at + 4 <= len(data), "a run ends inside a record header")
        (n,) = struct.unpack_from("<I", data, at)
        check(at + 4 + n <= len(data), "a run ends inside a record")
        out.append(data[at + 4 : at + 4 + n])
        at += 4 + n
    return out


def check_accounting(batch: RouteBatch, payloads: list[bytes]) -> None:
    events = batch.routed + len(batch.statuses) + batch.no_symbol
    check(batch.events == events, f"events {batch.events} != routed+statuses+no_symbol {events}")
    check(sum(batch.counts) == batch.routed, f"counts {batch.counts} != routed {batch.routed}")
    check(batch.malformed <= len(payloads), "more malformed payloads than payloads")
    for pipe, run in enumerate(batch.runs):
        recs = records_of(run)
        check(len(recs) == batch.counts[pipe], f"pipe {pipe}: {len(recs)} records")
        for rec in recs:
            check(rec[:1] == b"{" and rec[-1:] == b"}", f"record {rec[:40]!r} is not an object")
            check(any(rec in p for p in payloads), f"record {rec[:40]!r} is not the feed's bytes")


def _no_duplicates(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def reference(payloads: list[bytes], npipes: int, hash_name: str):
    """What routing must give for valid JSON arrays of objects; None for anything else."""
    docs = []
    for message in payloads:
        try:
            doc = json.loads(message.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (ValueError, RecursionError):
            return None
        if not isinstance(doc, list) or not all(isinstance(o, dict) for o in doc):
            return None
        docs.append(doc)
    return reference_route(payloads, docs, npipes, hash_name)


def payloads_of(data: bytes) -> list[bytes]:
    return data.split(bytes((SEP,))) if data else []


def npipes_of(b: int) -> int:
    return 300 if b == 0xFF else 1 + b % 40


def run_router(payloads: list[bytes], npipes: int, hash_name: str) -> None:
    py = Router(npipes, hash=hash_name).route_python(payloads)
    check_accounting(py, payloads)
    npy = Router(npipes, hash=hash_name).route_numpy(payloads)
    check(snapshot(npy) == snapshot(py), f"numpy {snapshot(npy)!r:.300} != {snapshot(py)!r:.300}")
    auto = Router(npipes, hash=hash_name, numpy_min_bytes=64).route(payloads)
    check(snapshot(auto) == snapshot(py), "Router.route differs from route_python")
    for wrap in (bytearray, memoryview):
        got = Router(npipes, hash=hash_name).route_python([wrap(p) for p in payloads])
        check(snapshot(got) == snapshot(py), f"{wrap.__name__} payloads route differently")
    # any split of the batch: the same runs, one after the other
    if len(payloads) > 1:
        k = len(payloads) // 2
        router = Router(npipes, hash=hash_name)
        first, second = router.route_python(payloads[:k]), router.route_numpy(payloads[k:])
        joined = tuple(a + b for a, b in zip(snapshot(first)[0], snapshot(second)[0], strict=True))
        check(joined == snapshot(py)[0], f"batch split at {k} routes differently")
        check(router.totals.routed == py.routed and router.totals.events == py.events, "totals")
    ref = reference(payloads, npipes, hash_name)
    if ref is not None:
        pipes, statuses, no_symbol = ref
        got = [records_of(r) for r in py.runs]
        check(got == pipes, f"valid JSON routed {got!r:.300}, the model says {pipes!r:.300}")
        check(py.statuses == statuses and py.no_symbol == no_symbol, "statuses/no_symbol")
        check(py.malformed == 0, "valid JSON counted as malformed")


def router(data: bytes) -> None:
    """Router.route/route_python/route_numpy: never raise, agree, account, split-invariant.

    data[0]: npipes (1 + b % 40; 0xFF: 300 pipes); data[1]: bit 0 hash (mixed, compat);
    data[2:]: payloads separated by 0xFF bytes.
    """
    npipes, hash_name = npipes_of(_param(data, 0)), HASH_NAMES[_param(data, 1) & 1]
    run_router(payloads_of(data[2:]), npipes, hash_name)


# -- tb.route.spans -------------------------------------------------------------------------


def same_batch(got: RouteBatch, want: RouteBatch) -> bool:
    return snapshot(got, errors=False)[:2] == snapshot(want, errors=False)[:2] and (
        got.routed,
        got.events,
        got.statuses,
    ) == (want.routed, want.events, want.statuses)


PAD_FILL = (b"\x00", b'"}],{', b"\xff", b'"sym":"')


def frames_arena(payloads: list[bytes], lead: int, fill: bytes):
    """The payloads as unmasked TEXT frames in an arena, as the balancer has them."""
    arena = bytearray(fill * lead)[:lead]
    starts, ends = [], []
    for p in payloads:
        n = len(p)
        head = bytes((0x81, n)) if n < 126 else bytes((0x81, 126)) + n.to_bytes(2, "big")
        if n >= 65536:
            head = bytes((0x81, 127)) + n.to_bytes(8, "big")
        arena += head
        starts.append(len(arena))
        arena += p
        ends.append(len(arena))
    arena += (fill * SPAN_PAD)[:SPAN_PAD]
    return np.frombuffer(arena, np.uint8), np.array(starts, np.int64), np.array(ends, np.int64)


def raw_arena(data: bytes, fill: bytes):
    """Spans anywhere in arbitrary bytes: data[0] spans, then (gap, length) byte pairs."""
    k = _param(data, 0) % 9
    pairs, body = data[1 : 1 + 2 * k], data[1 + 2 * k :]
    starts, ends, at = [], [], 0
    for i in range(0, len(pairs) - 1, 2):
        s = at + pairs[i] % 8
        e = min(s + pairs[i + 1], len(body))
        if s > e:
            break
        starts.append(s)
        ends.append(e)
        at = e
    arena = bytearray(body) + (fill * SPAN_PAD)[:SPAN_PAD]
    return np.frombuffer(arena, np.uint8), np.array(starts, np.int64), np.array(ends, np.int64)


def is_json(payload: bytes) -> bool:
    try:
        json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return True


def small_lane(router: Router, payloads: list) -> RouteBatch | None:
    """The small lane's batch as a RouteBatch (None: declined)."""
    got = router.small_runs(payloads)
    if got is None:
        return None
    runs, counts, used, n = got
    return RouteBatch(runs, counts, n, n, used=used)


def run_spans(a: np.ndarray, starts, ends, npipes: int, hash_name: str) -> None:
    """route_spans / small_lane on the spans a[starts[i]:ends[i]] against route_python.

    Strict for valid JSON. For invalid JSON the span router's documented limit applies (the
    grammar inside an object is not checked, so a message route_python counts as malformed may
    be passed on as the feed sent it): then route_spans and small_lane must agree instead.
    """
    before = a.tobytes()
    payloads = [a[s:e].tobytes() for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    want = Router(npipes, hash=hash_name).route_python(payloads)
    strict = all(is_json(p) for p in payloads)
    scratch, results = Scratch(), []

    def take(name: str, got) -> None:
        if got is not None:
            check_accounting(got, payloads)
            results.append(snapshot(got, errors=False))
            if strict:
                check(
                    same_batch(got, want),
                    f"{name} {results[-1]!r:.300} != {snapshot(want)!r:.300}",
                )

    for _ in range(2):  # twice: the scratch buffers are reused
        try:
            got = route_spans(a, starts, ends, npipes, hash_name, scratch)
        except ValueError as exc:
            if len(starts) and starts[0] == ends[-1] and known_bug("spans-empty-batch", exc):
                break
            raise
        check(a.tobytes() == before, "route_spans changed the arena")
        take("route_spans", got)
    router = Router(npipes, hash=hash_name)
    cache = router.pipe_cache
    views = [memoryview(a)[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    for _ in range(2):  # twice: the second time from the symbol cache
        take("small_lane", small_lane(router, views))
    check(
        all(r == results[0] for r in results), f"route_spans/small_lane disagree: {results!r:.600}"
    )
    for sym, pipe in cache.items():
        check(pipe == HASHES[hash_name](sym, npipes), f"cached pipe of {sym!r} is wrong")


def run_frames(a: np.ndarray, pos: int, end: int, npipes: int, hash_name: str) -> None:
    """route_frames on the frames in a[pos:end] against scan_data_frames + route_spans.

    It may decline (None: the caller scans as before); otherwise its spans and stop are
    scan_data_frames', and its batch is route_spans' on those spans (None exactly when that
    declines too). `end` may cut a frame anywhere; the bytes past it are stale."""
    before = a.tobytes()
    got = route_frames(a, pos, end, 16 << 20, npipes, hash_name, Scratch())
    check(a.tobytes() == before, "route_frames changed the arena")
    if got is None:
        return
    batch, starts, ends, stop = got
    want_s, want_e, ops, _ = scan_data_frames(a, memoryview(a), pos, end, 16 << 20)
    want_s, want_e, ops, k = as_list(want_s), as_list(want_e), as_list(ops), len(starts)
    # the same frames, or the first of them up to one scan_data_frames also takes but that is
    # no TEXT frame (a BINARY one: Connection.receive gets it)
    check(
        (starts.tolist(), ends.tolist()) == (want_s[:k], want_e[:k]) and stop == ends[-1],
        f"route_frames placed frames {starts.tolist()!r:.200} {ends.tolist()!r:.200} {stop}"
        f" where scan_data_frames has {want_s!r:.200} {want_e!r:.200}",
    )
    check(k == len(want_s) or ops[k] != 1, f"route_frames stopped before text frame {k}")
    check(all(op == 1 for op in ops[:k]), "route_frames took a frame that is not TEXT")
    want = route_spans(a, starts, ends, npipes, hash_name)
    check(
        (batch is None) == (want is None),
        f"route_frames {batch!r:.200} vs route_spans {want!r:.200}",
    )
    if batch is not None:
        check(same_batch(batch, want), "route_frames' batch differs from route_spans'")


def spans(data: bytes) -> None:
    """route_spans and small_lane: never raise; a batch they return equals route_python's.

    data[0]: npipes (as router); data[1]: bit 0 hash, bits 1-3 lead bytes before the first
    frame, bits 4-5 fill of the lead and pad (PAD_FILL), bit 6 raw mode; data[2:]: payloads
    separated by 0xFF (framed as the balancer's arena has them), or in raw mode spans anywhere
    in arbitrary bytes (see raw_arena).
    """
    npipes, flags = npipes_of(_param(data, 0)), _param(data, 1)
    fill = PAD_FILL[(flags >> 4) & 3]
    if flags & 0x40:
        a, starts, ends = raw_arena(data[2:], fill)
    else:
        a, starts, ends = frames_arena(payloads_of(data[2:]), (flags >> 1) & 7, fill)
        if len(starts):  # the frames themselves, whole and cut at a few places
            lead, end = (flags >> 1) & 7, int(ends[-1])
            for cut in sorted({end, end - 1, (lead + end) // 2, int(starts[-1]) - 1}):
                if cut > lead:
                    run_frames(a, lead, cut, npipes, HASH_NAMES[flags & 1])
    run_spans(a, starts, ends, npipes, HASH_NAMES[flags & 1])


# -- tb.capture -----------------------------------------------------------------------------

_CAPTURE_PATH: str | None = None


def capture(data: bytes) -> None:
    """read_capture on an arbitrary file: only CaptureError; what it yields is in the file."""
    global _CAPTURE_PATH
    if _CAPTURE_PATH is None:
        fd, _CAPTURE_PATH = tempfile.mkstemp(prefix="tb-fuzz-", suffix=".tbcap")
        os.close(fd)
    with open(_CAPTURE_PATH, "wb") as f:
        f.write(data)
    got: list[bytes] = []
    try:
        for payload in read_capture(_CAPTURE_PATH):
            check(type(payload) is bytes, f"yielded {type(payload).__name__}")
            got.append(payload)
    except CaptureError:
        return
    if data.startswith(MAGIC):
        rebuilt = MAGIC + b"".join(struct.pack("<I", len(p)) + p for p in got)
        check(rebuilt == data, "a binary capture read back differs from the file")
    else:
        lines = [line.strip() for line in data.split(b"\n")]
        check(got == [x for x in lines if x], f"JSON lines read as {got!r:.200}")
        check(all(p[:1] in (b"[", b"{") for p in got), "a JSON-lines payload is not [ or {")


TARGETS = {
    "ws": ws,
    "scan": scan,
    "handshake": handshake,
    "session": session,
    "router": router,
    "spans": spans,
    "capture": capture,
}

"""The numpy router: the fast rules of tb.route.fast_rules, vectorized over a whole batch.

Steps (a fixed number of numpy calls per batch, none per trade; rare cases -- statuses, forex
quotes, unusual whitespace, long values -- get a short Python loop over just those):
1. Join the payloads into one buffer (one copy) padded with zeros, so fixed-width windows never
   read past it.
2. Rules 1-3 per message: min/max/memchr for odd bytes; brace positions from byte compares and
   flatnonzero; brace alternation per message; quote parity per object by xor.reduceat; the
   separator bytes between objects column by column. Failing messages go to the slow path.
3. Rule 4 by byte patterns: ``"sym"``/``"pair"`` found with four uint32 views (offsets 0-3);
   the value from the two usual gap styles (``:`` / ``: ``) or 48-byte rows; ev found from the
   rare values ``"status"``/``"C"`` looking back for ``"ev"``.
4. Hash the symbols from zero-padded fixed-width rows (vectorized, tb.route.hashing).
5. Merge in the slow path's records by feed position, stable-argsort by pipe, and build one
   output buffer: 64-byte row copies (the last row end-aligned) plus u32 headers written
   through an unaligned uint32 view; each pipe's run is a memoryview slice of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np

from .batch import MAX_ERRORS, RouteBatch
from .fast_rules import MAX_FAST_SYMBOL, WS, le
from .python_path import _value
from .scratch import Scratch
from .slow import route_slowly

__all__ = ["route_numpy"]

# Zero bytes after the joined payloads: fixed-width windows starting inside the batch never read
# past the buffer (rows are masked to the symbol's length; copies stay inside records).
_PAD = bytes(64)
_COPY_WIDTH = 64  # bytes per row copy when building the output (measured: 32 < 64 ~ 128)
_I64 = np.int64


def _windows(buf: bytes | bytearray, dtype: np.dtype | type) -> np.ndarray:
    """An overlapping view: element i is the ``itemsize`` bytes at buf[i] (unaligned, stride 1)."""
    dt = np.dtype(dtype)
    return np.ndarray((len(buf) - dt.itemsize + 1,), dt, buffer=buf, strides=(1,))


def _gather_ranges(full: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """Bytes of full[starts[i]:ends[i]] for all i, concatenated, and each byte's range number."""
    lengths = ends - starts
    total = int(lengths.sum())
    owner = np.repeat(np.arange(len(starts)), lengths)
    index = np.arange(total) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return full[index], owner


def _is_ws(b: np.ndarray) -> np.ndarray:
    return (b == 32) | (b == 9) | (b == 10) | (b == 13)


_SHORT_GAP = 4  # gaps up to this long are checked column by column (compact: 1, spaced: 2)


def _gaps_hold_one(full: np.ndarray, starts, ends, want) -> np.ndarray:
    """For each range: exactly one non-whitespace byte and it equals ``want`` (rules 3 and 4)."""
    n = len(starts)
    want = np.broadcast_to(want, (n,))
    lengths = ends - starts
    ok = np.zeros(n, dtype=bool)
    short = (lengths >= 1) & (lengths <= _SHORT_GAP)
    (idx,) = np.nonzero(short)
    if len(idx):
        s, ln, w = starts[idx], lengths[idx], want[idx]
        hits = np.zeros(len(idx), dtype=np.int8)
        stray = np.zeros(len(idx), dtype=bool)
        for col in range(int(ln.max())):
            b = full[s + col]  # may read past the range (masked) but never past the padding
            inside = ln > col
            hit = b == w
            hits += inside & hit
            stray |= inside & ~hit & ~_is_ws(b)
        ok[idx] = (hits == 1) & ~stray
    (idx,) = np.nonzero(lengths > _SHORT_GAP)
    if len(idx):
        got, owner = _gather_ranges(full, starts[idx], ends[idx])
        solid = ~_is_ws(got)
        count = np.bincount(owner[solid], minlength=len(idx))
        value = np.bincount(owner[solid], weights=got[solid], minlength=len(idx))
        ok[idx] = (count == 1) & (value == want[idx])
    return ok


def _check_messages(buf, body, mstart, mend, scratch: Scratch):
    """Rules 1-3 per message; returns (bad per message, brace positions and their message)."""
    nmsg = len(mstart)
    bad = np.zeros(nmsg, dtype=bool)
    # Rule 1. Such bytes are rare: min/max reductions and a memchr settle it for most batches,
    # and only then are they located (test_router: control bytes, backslashes, unicode).
    if len(body) and (body.min() < 32 or body.max() >= 128 or buf.find(b"\\", 0, len(body)) != -1):
        odd = body < 32
        odd |= body >= 128
        odd |= body == 92
        at = np.flatnonzero(odd)
        v = body[at]
        at = at[(v >= 128) | (v == 92) | ((v != 9) & (v != 10) & (v != 13))]
        bad[np.searchsorted(mend, at, side="right")] = True
    brace, other = scratch.bools(len(body)), scratch.bools(len(body), 1)
    np.equal(body, 123, out=brace)
    np.equal(body, 125, out=other)
    brace |= other
    bpos = np.flatnonzero(brace)
    b_first = np.searchsorted(bpos, mstart)
    b_count = np.searchsorted(bpos, mend) - b_first
    bad |= (b_count & 1).astype(bool) | (b_count == 0)
    bmsg = np.repeat(np.arange(nmsg), b_count)
    # Flat objects: the message's k-th brace is { for even k, } for odd k (rule 3).
    nth = np.arange(len(bpos)) - b_first[bmsg]
    bad[bmsg[(body[bpos] == 123) != ((nth & 1) == 0)]] = True
    keep = ~bad[bmsg]
    bpos, bmsg = bpos[keep], bmsg[keep]
    if len(bpos):
        # Rule 2: an even number of quotes inside each object; with no quote between objects
        # (the separator check) that means no brace sits in a string. xor.reduceat = parity.
        quote = np.equal(body, 34, out=other)
        parity = np.bitwise_xor.reduceat(quote.view(np.uint8), bpos)[0::2]
        bad[bmsg[0::2][parity == 1]] = True
    return bad, bpos, bmsg


def _check_separators(full, bad, opens, closes, omsg, mstart, mend) -> None:
    """Rule 3: ws [ ws before the first object, ws , ws between, ws ] ws after the last."""
    n = len(opens)
    if n == 0:
        return
    first = np.ones(n, dtype=bool)
    first[1:] = omsg[1:] != omsg[:-1]
    last = np.ones(n, dtype=bool)
    last[:-1] = first[1:]
    before = np.empty(n, dtype=_I64)
    before[0] = 0
    before[1:] = closes[:-1] + 1
    starts = np.concatenate((np.where(first, mstart[omsg], before), closes[last] + 1))
    ends = np.concatenate((opens, mend[omsg[last]]))
    want = np.concatenate((np.where(first, 0x5B, 0x2C), np.full(int(last.sum()), 0x5D)))
    owner = np.concatenate((omsg, omsg[last]))
    bad[owner[~_gaps_hold_one(full, starts, ends, want)]] = True


class _Words:
    """Pattern search over the batch: four uint32 views at byte offsets 0-3 hold every 4-byte
    window once, so one compare per view (plus any()/nonzero) finds a 4-byte head anywhere
    (test_router_props: every placement, both paths)."""

    def __init__(self, buf: bytes, total: int, opens: np.ndarray, closes: np.ndarray) -> None:
        self.buf, self.total, self.opens, self.closes = buf, total, opens, closes
        self.full = np.frombuffer(buf, np.uint8)
        self.views = [
            np.frombuffer(buf, "<u4", count=(total - k) // 4, offset=k)
            if total - k >= 4
            else np.zeros(0, np.uint32)
            for k in range(4)
        ]

    def _heads(self, pattern: bytes) -> list[np.ndarray]:
        return [v == le(pattern[:4]) for v in self.views]

    def _verify(self, pos: np.ndarray, pattern: bytes) -> np.ndarray:
        for i in range(4, len(pattern)):
            pos = pos[self.full[pos + i] == pattern[i]]
        return pos[pos + len(pattern) <= self.total]

    def occurrences(self, pattern: bytes):
        """Every occurrence of ``pattern`` (overlapping too) inside an object: (pos, object)."""
        empty = np.zeros(0, dtype=_I64)
        if len(self.opens) == 0:
            return empty, empty
        if len(pattern) < 4:  # short and rare ("C", "p"): bytes.find finds them all
            found, at = [], self.buf.find(pattern, 0, self.total)
            while at != -1:
                found.append(at)
                at = self.buf.find(pattern, at + 1, self.total)
            pos = np.array(found, dtype=_I64)
        else:
            heads = self._heads(pattern)
            if not any(h.any() for h in heads):
                return empty, empty
            pos = np.sort(np.concatenate([np.flatnonzero(h) * 4 + k for k, h in enumerate(heads)]))
        pos = self._verify(pos, pattern)
        obj = np.searchsorted(self.opens, pos, side="right") - 1
        # An occurrence outside every object sits in a separator: its message is already bad.
        inside = (obj >= 0) & (pos + len(pattern) <= self.closes[np.maximum(obj, 0)])
        return pos[inside], obj[inside]


_ROW = 48  # bytes after a key examined at once when the gap is unusual (else: exactly)
_ROW_T = np.dtype((np.void, _ROW))


def _values(buf, full, key_end, close):
    """For keys ending at ``key_end``: (keyed, value start, value end). Keyed means the bytes up
    to the next quote are ws : ws; the value runs from there to the following quote (end -1
    when that quote is not before the object's ``}`` at ``close``)."""
    c0, c1, c2 = full[key_end], full[key_end + 1], full[key_end + 2]
    # The two styles feeds use, decided from three bytes: ":" and ": " (test_router: styles).
    compact = (c0 == 0x3A) & (c1 == 0x22)
    spaced = (c0 == 0x3A) & (c1 == 0x20) & (c2 == 0x22)
    keyed = compact | spaced
    start = key_end + np.where(compact, 2, 3)
    (other,) = np.nonzero(~keyed)
    if len(other):
        keyed[other], start[other] = _values_rows(buf, key_end[other], close[other])
    end = np.full(len(key_end), -1, dtype=_I64)
    (todo,) = np.nonzero(keyed)
    at = start[todo]
    for col in range(MAX_FAST_SYMBOL + 1):  # column by column: symbols are short
        hit = full[at + col] == 0x22
        end[todo[hit]] = at[hit] + col
        todo, at = todo[~hit], at[~hit]
        if not len(todo):
            break
    for i in todo.tolist():  # a value longer than any fast symbol: exactly, rarely
        end[i] = buf.find(b'"', int(start[i]), int(close[i]))
    end[end >= close] = -1
    return keyed, start, end


def _values_rows(buf, key_end, close):
    """(keyed, value start) for keys whose gap is neither ":" nor ": ", from 48-byte rows."""
    n = len(key_end)
    rows = _windows(buf, _ROW_T)[key_end].view(np.uint8).reshape(n, _ROW)
    is_q = rows == 0x22
    fq = np.argmax(is_q, axis=1)
    has_fq = is_q.any(axis=1)
    prefix = np.arange(_ROW) < np.where(has_fq, fq, _ROW)[:, None]
    colon = rows == 0x3A
    stray = (prefix & ~colon & ~_is_ws(rows)).any(axis=1)
    keyed = has_fq & ~stray & ((prefix & colon).sum(axis=1) == 1)
    start = key_end + fq + 1
    for i in np.flatnonzero(~has_fq & ~stray).tolist():  # 48 bytes of ws/colon: exactly
        v = _value(buf, int(key_end[i]), int(close[i]) + 1)
        keyed[i], start[i] = v != -1, v
    return keyed, start


def _ev_value(buf, open_at: int, c: int) -> bool:
    """Is the string opening at quote ``c`` the value of an ``"ev"`` key (rule 4b, backwards:
    the quote before it closes ``"ev"`` and only ws : ws lies between)?"""
    q = buf.rfind(b'"', open_at, c)
    return q - 3 > open_at and buf[q - 3 : q + 1] == b'"ev"' and buf[q + 1 : c].strip(WS) == b":"


def _named(words: _Words, bad, omsg, key: bytes):
    """Rule 4a for ``key`` ("sym" or "pair"): (objects, value starts, value ends) of good ones."""
    buf, full, opens, closes = words.buf, words.full, words.opens, words.closes
    pos, obj = words.occurrences(key)
    # "sym"sym": overlapping occurrences (the Python path tests for these bytes).
    overlap = pos[1:] == pos[:-1] + len(key) - 1
    bad[omsg[obj[1:][overlap]]] = True
    bad[omsg[np.bincount(obj, minlength=len(opens)) > 1]] = True
    keyed, start, end = _values(buf, full, pos + len(key), closes[obj])
    bad[omsg[obj[~keyed | (end < 0)]]] = True
    return obj, start, end


def _find_instruments(buf, full, total, bad, opens, closes, omsg):
    """Rules 4-5 per object: (status?, symbol start, symbol length or -1). Marks bad messages."""
    nobj = len(opens)
    sym_at = np.full(nobj, -1, dtype=_I64)
    sym_end = np.full(nobj, -1, dtype=_I64)
    words = _Words(buf, total, opens, closes)
    for key in (b'"pair"', b'"sym"'):  # pair first, then sym overwrites it: sym wins
        obj, start, end = _named(words, bad, omsg, key)
        sym_at[obj], sym_end[obj] = start, end
    status = np.zeros(nobj, dtype=bool)
    forex = np.zeros(nobj, dtype=bool)
    # Rule 4b from the rare values' side: find "status" / "C", then look back for "ev".
    for pattern, flags in ((b'"status"', status), (b'"C"', forex)):
        pos, obj = words.occurrences(pattern)
        for at, o in zip(pos.tolist(), obj.tolist(), strict=True):
            if _ev_value(buf, int(opens[o]), at):
                flags[o] = True
    for o in np.flatnonzero(status | forex).tolist():
        # An object with two "ev" occurrences, one of them interesting, is refused.
        first = buf.find(b'"ev"', int(opens[o]), int(closes[o]))
        if buf.find(b'"ev"', first + 1, int(closes[o])) != -1:
            bad[omsg[o]] = True
    sym_at[status] = -1
    need_p = forex & (sym_at < 0) & ~status
    if need_p.any():
        # Rule 4c: "p" once in such an object; a key -> its value is the instrument.
        pos, obj = words.occurrences(b'"p"')
        mine = need_p[obj]
        pos, obj = pos[mine], obj[mine]
        bad[omsg[obj[np.bincount(obj, minlength=nobj)[obj] > 1]]] = True
        keyed, start, end = _values(buf, full, pos + 3, closes[obj])
        bad[omsg[obj[keyed & (end < 0)]]] = True
        sym_at[obj[keyed]], sym_end[obj[keyed]] = start[keyed], end[keyed]
    sym_len = np.where(sym_at >= 0, sym_end - sym_at, -1)
    bad[omsg[sym_len > MAX_FAST_SYMBOL]] = True
    return status, sym_at, sym_len


def _hash_symbols(buf, starts, lengths, npipes, vector_pipes):
    if len(starts) == 0:
        return np.zeros(0, dtype=_I64)
    width = max(int(lengths.max()), 1)
    rows = _windows(buf, np.dtype((np.void, width)))[starts].view(np.uint8).reshape(-1, width)
    # Zero everything past each symbol: the padding the hashes are built to ignore (test_hashing).
    rows *= np.arange(width) < lengths[:, None]
    return vector_pipes(rows, lengths, npipes)


def _build_runs(buf, starts, lengths, pipes, npipes):
    """Records in (pipe, feed) order as one buffer; returns (runs, counts)."""
    n = len(starts)
    # Stable sort keeps feed order within each pipe (test_router: order per pipe pinned).
    order = np.argsort(pipes.astype(np.uint16) if npipes <= 65536 else pipes, kind="stable")
    starts, lengths, pipes = starts[order], lengths[order], pipes[order]
    sizes = lengths + 4
    dest = np.cumsum(sizes) - sizes
    out = bytearray(int(sizes.sum()))
    if n:
        # Headers: unaligned little-endian uint32 view of the output (test_router pins format).
        _windows(out, "<u4")[dest] = lengths
        body = dest + 4
        width = _COPY_WIDTH
        wide = lengths >= width
        if wide.any():
            # Rows of `width` bytes, the last one end-aligned: overlaps inside a record write the
            # same bytes, so no reliance on fancy-assignment order (test_router_props pins bytes).
            w_len, w_src, w_dst = lengths[wide], starts[wide], body[wide]
            nrows = (w_len + width - 1) // width
            rec = np.repeat(np.arange(len(w_len)), nrows)
            k = np.arange(len(rec)) - np.repeat(np.cumsum(nrows) - nrows, nrows)
            off = np.minimum(k * width, w_len[rec] - width)
            row_t = np.dtype((np.void, width))
            _windows(out, row_t)[w_dst[rec] + off] = _windows(buf, row_t)[w_src[rec] + off]
        narrow = ~wide
        if narrow.any():
            got, owner = _gather_ranges(
                np.frombuffer(buf, np.uint8), starts[narrow], starts[narrow] + lengths[narrow]
            )
            n_len, n_dst = lengths[narrow], body[narrow]
            idx = np.arange(len(got)) + np.repeat(n_dst - (np.cumsum(n_len) - n_len), n_len)
            np.frombuffer(out, np.uint8)[idx] = got
    counts = np.bincount(pipes, minlength=npipes)
    ends = np.cumsum(np.bincount(pipes, weights=sizes, minlength=npipes).astype(_I64))
    view = memoryview(out)
    runs: list[memoryview | None] = [None] * npipes
    begin = 0
    for pipe, end in enumerate(ends.tolist()):
        if end > begin:
            runs[pipe] = view[begin:end]
        begin = end
    return runs, counts.tolist()


def route_numpy(
    payloads: Sequence[bytes | bytearray | memoryview],
    npipes: int,
    pipe_of: Callable[[bytes], int],
    vector_pipes: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
    scratch: Scratch | None = None,
) -> RouteBatch:
    """Route a batch with numpy (see tb.route.Router.route_numpy)."""
    if scratch is None:
        scratch = Scratch()
    sizes = [memoryview(p).nbytes for p in payloads]
    buf = b"".join([*payloads, _PAD])
    total = len(buf) - len(_PAD)
    full = np.frombuffer(buf, np.uint8)
    body = full[:total]
    mend = np.cumsum(np.array(sizes, dtype=_I64))
    mstart = mend - np.array(sizes, dtype=_I64)
    bad, bpos, bmsg = _check_messages(buf, body, mstart, mend, scratch)
    opens, closes, omsg = bpos[0::2], bpos[1::2], bmsg[0::2]
    _check_separators(full, bad, opens, closes, omsg, mstart, mend)
    status, sym_start, sym_len = _find_instruments(buf, full, total, bad, opens, closes, omsg)
    decoded: list[tuple[int, dict]] = []
    for i in np.flatnonzero(status & ~bad[omsg]).tolist():
        try:  # rule 6
            decoded.append((i, json.loads(buf[opens[i] : closes[i] + 1].decode())))
        except ValueError:
            bad[omsg[i]] = True
    ok = ~bad[omsg]
    found = [(int(opens[i]), obj) for i, obj in decoded if ok[i]]
    routed = ok & (sym_len >= 0)
    r_start = opens[routed]
    r_len = closes[routed] + 1 - r_start
    r_pipe = _hash_symbols(buf, sym_start[routed], sym_len[routed], npipes, vector_pipes)
    batch = RouteBatch(runs=[], counts=[])
    batch.no_symbol = int((ok & (sym_len < 0) & ~status).sum())
    slow_records: list[tuple[int, int, int]] = []
    for index in np.flatnonzero(bad).tolist():
        base = int(mstart[index])
        slow = route_slowly(buf[base : int(mend[index])], pipe_of)
        slow_records.extend((base + s, e - s, p) for s, e, p in slow.records)
        found.extend((base + at, obj) for at, obj in slow.statuses)
        batch.no_symbol += slow.no_symbol
        batch.fallback += slow.objects
        if slow.malformed:
            batch.malformed += 1
            if len(batch.errors) < MAX_ERRORS:
                batch.errors.append(f"payload {index}: {slow.error}")
    if slow_records:
        extra = np.array(slow_records, dtype=_I64).reshape(-1, 3)
        r_start = np.concatenate((r_start, extra[:, 0]))
        r_len = np.concatenate((r_len, extra[:, 1]))
        r_pipe = np.concatenate((r_pipe, extra[:, 2]))
        by_feed = np.argsort(r_start, kind="stable")
        r_start, r_len, r_pipe = r_start[by_feed], r_len[by_feed], r_pipe[by_feed]
    batch.runs, batch.counts = _build_runs(buf, r_start, r_len, r_pipe, npipes)
    found.sort(key=lambda item: item[0])
    batch.statuses = [obj for _at, obj in found]
    batch.routed = len(r_start)
    batch.events = batch.routed + len(batch.statuses) + batch.no_symbol
    return batch

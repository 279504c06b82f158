"""The numpy router: the fast rules of tb.route.fast_rules, vectorized over a whole batch.

Steps (each costs a handful of numpy calls per batch, none per trade):
1. Join the payloads into one buffer and find every "special" byte (quote, brace, backslash,
   control) with byte compares and one flatnonzero.
2. Per message, check rules 1-3 from those positions alone (quote parity, brace alternation, the
   separator bytes between objects); messages that fail go to the slow path.
3. Pair quotes into string tokens; find the ``sym``/``pair``/``ev``/``p`` key tokens from 4-byte
   windows at each opening quote; check the gap to the value (rule 4) and the symbol length.
4. Hash the symbols from zero-padded fixed-width rows (vectorized FNV-1a, tb.route.hashing).
5. Merge in the slow path's records, stable-argsort by pipe, and build the output with fixed-width
   row copies plus u32 headers written through an unaligned uint32 view.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np

from .batch import MAX_ERRORS, RouteBatch
from .fast_rules import MAX_FAST_SYMBOL
from .hashing import fnv1a64_rows
from .slow import route_slowly

__all__ = ["route_numpy"]

# Zero bytes after the joined payloads: fixed-width windows starting inside the batch never read
# past the buffer (rows are masked to the symbol's length; copies stay inside records).
_PAD = bytes(64)
_COPY_WIDTH = 64  # bytes per row copy when building the output (measured: 32 < 64 ~ 128)
_I64 = np.int64


def _le(text: bytes) -> int:
    return int.from_bytes(text, "little")


_SYM_Q, _PAIR = _le(b'sym"'), _le(b"pair")
_EV_Q, _STATUS_Q, _C_Q = _le(b'ev"'), _le(b'status"'), _le(b'C"')
_MASK3, _MASK7 = 0xFFFFFF, (1 << 56) - 1


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


def _check_messages(body, mstart, mend):
    """Rules 1-3 per message; returns (bad per message, quote and brace positions of the rest)."""
    nmsg = len(mstart)
    bad = np.zeros(nmsg, dtype=bool)
    # Rule 1. Such bytes are rare, so one any() usually settles it; only then locate them.
    odd = body < 32
    odd |= body >= 128
    odd |= body == 92
    if odd.any():
        at = np.flatnonzero(odd)
        v = body[at]
        at = at[(v >= 128) | (v == 92) | ((v != 9) & (v != 10) & (v != 13))]
        bad[np.searchsorted(mend, at, side="right")] = True
    qpos = np.flatnonzero(body == 34)
    brace = body == 123
    brace |= body == 125
    bpos = np.flatnonzero(brace)
    q_first = np.searchsorted(qpos, mstart)  # index of each message's first quote
    q_count = np.searchsorted(qpos, mend) - q_first
    b_first = np.searchsorted(bpos, mstart)
    b_count = np.searchsorted(bpos, mend) - b_first
    bad |= ((q_count | b_count) & 1).astype(bool) | (b_count == 0)
    bmsg = np.repeat(np.arange(nmsg), b_count)
    # A brace after an odd number of its message's quotes sits inside a string (rule 2).
    in_string = (np.searchsorted(qpos, bpos) - q_first[bmsg]) & 1
    # Flat objects: the message's k-th brace is { for even k, } for odd k (rule 3).
    nth = np.arange(len(bpos)) - b_first[bmsg]
    wrong = (body[bpos] == 123) != ((nth & 1) == 0)
    bad[bmsg[(in_string == 1) | wrong]] = True
    if bad.any():
        good = ~bad
        qpos = qpos[np.repeat(good, q_count)] if len(qpos) else qpos
        keep_b = good[bmsg]
        bpos, bmsg = bpos[keep_b], bmsg[keep_b]
    return bad, qpos, bpos, bmsg


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


def _find_instruments(buf, full, bad, qpos, opens, closes, omsg):
    """Rules 4-5 per object: (status?, symbol start, symbol length or -1). Marks bad messages.

    Works on raw quote positions q: an occurrence of ``"N"`` starts at some quote j (its closing
    quote is j+1); as a key, its value opens at quote j+2 and closes at quote j+3.
    """
    nobj, nq = len(opens), len(qpos)
    none = np.full(nobj, -1, dtype=_I64)
    if nq < 2:
        return np.zeros(nobj, dtype=bool), none, none
    q = np.append(qpos, (len(full) - 1,) * 3)  # sentinels: j+3 always indexes
    gap = q[1 : nq + 1] - q[:nq]  # distance to the next quote
    first = full[q[:nq] + 1]
    # Cheap prefilter on (distance, first byte), then 4-byte windows on the few left.
    (cand,) = np.nonzero(
        ((gap == 4) & (first == 0x73))
        | ((gap == 5) & (first == 0x70))
        | ((gap == 3) & (first == 0x65))
    )
    word = _windows(buf, "<u4")[q[cand] + 1]
    kind = np.select([word == _SYM_Q, word == _PAIR, (word & _MASK3) == _EV_Q], [0, 1, 2], -1)
    cand, kind = cand[kind >= 0], kind[kind >= 0]
    cobj = np.searchsorted(opens, q[cand], side="right") - 1
    # An occurrence outside every object sits in a separator: its message is already bad.
    inside = (cobj >= 0) & (q[cand] < closes[np.maximum(cobj, 0)])
    cand, kind, cobj = cand[inside], kind[inside], cobj[inside]
    close = closes[cobj]
    # Rule 4a/4b overlaps: the same name at consecutive quotes ("sym"sym").
    overlap = (cand[1:] == cand[:-1] + 1) & (kind[1:] == kind[:-1]) & (kind[1:] <= 1)
    bad[omsg[cobj[1:][overlap]]] = True
    per_name = np.bincount(cobj * 3 + kind, minlength=3 * nobj).reshape(nobj, 3)
    keyed = _key_gaps(full, q, cand)
    v_open, v_close = q[cand + 2], q[cand + 3]
    # Rule 4a: sym and pair once per object, keys, value closing inside the object.
    named = kind <= 1
    bad[omsg[cobj[named & ~(keyed & (v_close < close))]]] = True
    bad[omsg[(per_name[:, :2] > 1).any(axis=1)]] = True
    use = np.full(nobj, -1, dtype=_I64)  # quote index of the chosen value's opening quote
    for k in (1, 0):  # pair first so that sym overwrites it: sym wins (rule placement)
        hit = kind == k
        use[cobj[hit]] = cand[hit] + 2
    # Rule 4b: an ev matters only as a key whose value is status or C.
    ev = kind == 2
    v_at = np.minimum(v_open[ev] + 1, len(full) - 8)
    is_status = (_windows(buf, "<u8")[v_at] & np.uint64(_MASK7)) == _STATUS_Q
    is_forex = _windows(buf, "<u2")[v_at] == _C_Q
    ev_obj = cobj[ev]
    hot = keyed[ev] & (is_status | is_forex)
    bad[omsg[ev_obj[hot][per_name[ev_obj[hot], 2] > 1]]] = True
    status = np.zeros(nobj, dtype=bool)
    forex = np.zeros(nobj, dtype=bool)
    status[ev_obj[hot & is_status]] = True
    forex[ev_obj[hot & is_forex]] = True
    use[status] = -1
    need_p = np.flatnonzero(forex & (use < 0) & ~status)
    if len(need_p):
        use[need_p] = _forex_p(full, bad, q, nq, gap, first, opens, closes, omsg, need_p)
    safe = np.maximum(use, 0)
    sym_len = np.where(use >= 0, q[safe + 1] - q[safe] - 1, -1)
    bad[omsg[sym_len > MAX_FAST_SYMBOL]] = True
    return status, q[safe] + 1, sym_len


def _key_gaps(full, q, occ) -> np.ndarray:
    """For occurrences starting at quotes ``occ``: is the gap to quote occ+2 exactly ws : ws?"""
    return _gaps_hold_one(full, q[occ + 1] + 1, q[occ + 2], 0x3A)


def _forex_p(full, bad, q, nq, gap, first, opens, closes, omsg, objs) -> np.ndarray:
    """Rule 4c: the value's opening quote index of ``"p"`` in forex quotes ``objs`` (-1: none)."""
    (occ,) = np.nonzero((gap == 2) & (first == 0x70))
    pobj = np.searchsorted(opens, q[occ], side="right") - 1
    mine = np.isin(pobj, objs) & (q[occ] < closes[np.maximum(pobj, 0)])
    occ, pobj = occ[mine], pobj[mine]
    once = np.bincount(pobj, minlength=len(opens)) == 1
    bad[omsg[objs[np.bincount(pobj, minlength=len(opens))[objs] > 1]]] = True
    keyed = _key_gaps(full, q, occ) & once[pobj]
    closing_inside = q[occ + 3] < closes[pobj]
    bad[omsg[pobj[keyed & ~closing_inside]]] = True
    out = np.full(len(opens), -1, dtype=_I64)
    out[pobj[keyed]] = occ[keyed] + 2
    return out[objs]


def _hash_symbols(buf, starts, lengths, npipes, vector_pipes):
    if len(starts) == 0:
        return np.zeros(0, dtype=_I64)
    width = max(int(lengths.max()), 1)
    rows = _windows(buf, np.dtype((np.void, width)))[starts].view(np.uint8).reshape(-1, width)
    # Zero everything past each symbol: the padding the hash correction undoes (test_hashing).
    rows *= np.arange(width) < lengths[:, None]
    return vector_pipes(fnv1a64_rows(rows, lengths), npipes)


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
    vector_pipes: Callable[[np.ndarray, int], np.ndarray],
) -> RouteBatch:
    """Route a batch with numpy (see tb.route.Router.route_numpy)."""
    sizes = [memoryview(p).nbytes for p in payloads]
    buf = b"".join([*payloads, _PAD])
    total = len(buf) - len(_PAD)
    full = np.frombuffer(buf, np.uint8)
    body = full[:total]
    mend = np.cumsum(np.array(sizes, dtype=_I64))
    mstart = mend - np.array(sizes, dtype=_I64)
    bad, qpos, bpos, bmsg = _check_messages(body, mstart, mend)
    opens, closes, omsg = bpos[0::2], bpos[1::2], bmsg[0::2]
    _check_separators(full, bad, opens, closes, omsg, mstart, mend)
    status, sym_start, sym_len = _find_instruments(buf, full, bad, qpos, opens, closes, omsg)
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

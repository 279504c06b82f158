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
_EV_Q, _P_Q, _C_Q = _le(b'ev"'), _le(b'p"'), _le(b'C"')
_STATUS_Q = _le(b'status"')
_MASK2, _MASK3, _MASK7 = 0xFFFF, 0xFFFFFF, (1 << 56) - 1


def _windows(buf: bytes | bytearray, dtype: np.dtype | type) -> np.ndarray:
    """An overlapping view: element i is the ``itemsize`` bytes at buf[i] (unaligned, stride 1)."""
    dt = np.dtype(dtype)
    return np.ndarray((len(buf) - dt.itemsize + 1,), dt, buffer=buf, strides=(1,))


def _gather_ranges(body: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """Bytes of body[starts[i]:ends[i]] for all i, concatenated, and each byte's range number."""
    lengths = ends - starts
    total = int(lengths.sum())
    owner = np.repeat(np.arange(len(starts)), lengths)
    index = np.arange(total) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return body[index], owner


def _ranges_hold_one(body: np.ndarray, starts, ends, want) -> np.ndarray:
    """For each range: exactly one non-whitespace byte and it equals want[i] (rules 3 and 4)."""
    got, owner = _gather_ranges(body, starts, ends)
    solid = (got != 32) & (got != 9) & (got != 10) & (got != 13)
    n = len(starts)
    count = np.bincount(owner[solid], minlength=n)
    value = np.bincount(owner[solid], weights=got[solid], minlength=n)
    return (count == 1) & (value == want)


def _check_messages(body, mstart, mend):
    """Rules 1-3 per message; returns (bad per message, quote and brace positions of the rest)."""
    nmsg = len(mstart)
    special = body == 34
    special |= body == 92
    special |= body == 123
    special |= body == 125
    special |= body < 32
    special |= body >= 128
    pos = np.flatnonzero(special)
    val = body[pos]
    bounds = np.searchsorted(pos, np.append(mstart, len(body)))
    msg_of = np.repeat(np.arange(nmsg), np.diff(bounds))
    is_q = val == 34
    is_brace = (val == 123) | (val == 125)
    bad_byte = (val == 92) | (val >= 128) | ((val < 32) & (val != 9) & (val != 10) & (val != 13))
    bad = np.zeros(nmsg, dtype=bool)
    bad[msg_of[bad_byte]] = True
    q_before = np.concatenate(([0], np.cumsum(is_q)))  # quotes among specials before index i
    b_before = np.concatenate(([0], np.cumsum(is_brace)))
    bad |= ((q_before[bounds[1:]] - q_before[bounds[:-1]]) & 1).astype(bool)
    nbrace = b_before[bounds[1:]] - b_before[bounds[:-1]]
    bad |= (nbrace == 0) | (nbrace & 1).astype(bool)
    (bidx,) = np.nonzero(is_brace)
    bmsg = msg_of[bidx]
    # A brace after an odd number of the message's quotes sits inside a string (rule 2).
    in_string = (q_before[bidx] - q_before[bounds[bmsg]]) & 1
    # Flat objects: the message's k-th brace is { for even k, } for odd k (rule 3).
    nth = np.arange(len(bidx)) - b_before[bounds[bmsg]]
    wrong = (val[bidx] == 123) != ((nth & 1) == 0)
    bad[bmsg[(in_string == 1) | wrong]] = True
    keep_q = is_q & ~bad[msg_of]
    keep_b = ~bad[bmsg]
    return bad, pos[keep_q], pos[bidx[keep_b]], bmsg[keep_b]


def _check_separators(body, bad, opens, closes, omsg, mstart, mend) -> None:
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
    bad[owner[~_ranges_hold_one(body, starts, ends, want)]] = True


def _find_instruments(buf, body, bad, qpos, opens, closes, omsg):
    """Rule 4-5 per object: (status?, symbol start, symbol length; -1 = none). Marks bad."""
    nobj = len(opens)
    qo, qc = qpos[0::2], qpos[1::2]  # every checked message has paired quotes (rule 2)
    ntok = len(qo)
    if ntok == 0:
        return np.zeros(nobj, dtype=bool), np.zeros(nobj, dtype=_I64), np.full(nobj, -1, _I64)
    w32 = _windows(buf, "<u4")[qo + 1]  # first 4 content bytes (+ closing quote when short)
    is_sym = w32 == _SYM_Q
    is_pair = (w32 == _PAIR) & (qc - qo == 5)
    is_ev = (w32 & _MASK3) == _EV_Q
    is_p = (w32 & _MASK2) == _P_Q
    (cand,) = np.nonzero(is_sym | is_pair | is_ev | is_p)
    cobj = np.searchsorted(opens, qo[cand], side="right") - 1
    # A token outside every object sits in a separator, so its message is already bad: skip it.
    inside = (cobj >= 0) & (qo[cand] < closes[np.maximum(cobj, 0)])
    cand, cobj = cand[inside], cobj[inside]
    nxt = np.minimum(cand + 1, ntok - 1)
    # Key with a string value: between its closing quote and the next quote only ws : ws.
    gap_ok = (cand + 1 < ntok) & (qo[nxt] > qc[cand] + 1)
    gap_ok[gap_ok] = _ranges_hold_one(
        body, qc[cand[gap_ok]] + 1, qo[nxt[gap_ok]], np.full(int(gap_ok.sum()), 0x3A)
    )
    c_sym, c_pair, c_ev, c_p = is_sym[cand], is_pair[cand], is_ev[cand], is_p[cand]
    bad[omsg[cobj[(c_sym | c_pair) & ~gap_ok]]] = True  # sym/pair not a string-valued key
    value_tok = np.full((4, nobj), -1, dtype=_I64)
    for row, kind in enumerate((c_sym, c_pair, c_ev, c_p)):
        hit = kind & gap_ok
        value_tok[row, cobj[hit]] = nxt[hit]
        dup = np.bincount(cobj[hit], minlength=nobj) > 1
        if row == 3:
            dup_p = dup  # a second "p" key matters only in a forex quote, decided below
        else:
            bad[omsg[dup]] = True
    sym_tok, pair_tok, ev_tok, p_tok = value_tok
    has_ev = ev_tok >= 0
    ev_at = qo[np.where(has_ev, ev_tok, 0)] + 1
    status = has_ev & ((_windows(buf, "<u8")[ev_at] & np.uint64(_MASK7)) == _STATUS_Q)
    forex = has_ev & ((_windows(buf, "<u2")[ev_at]) == _C_Q)
    tok = np.where(sym_tok >= 0, sym_tok, pair_tok)
    use_p = (tok < 0) & forex
    bad[omsg[use_p & dup_p]] = True
    tok = np.where(use_p, p_tok, tok)
    tok[status] = -1
    safe = np.maximum(tok, 0)
    sym_start = qo[safe] + 1
    sym_len = np.where(tok >= 0, qc[safe] - sym_start, -1)
    bad[omsg[sym_len > MAX_FAST_SYMBOL]] = True
    return status, sym_start, sym_len


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
    body = np.frombuffer(buf, np.uint8, count=total)
    mend = np.cumsum(np.array(sizes, dtype=_I64))
    mstart = mend - np.array(sizes, dtype=_I64)
    bad, qpos, bpos, bmsg = _check_messages(body, mstart, mend)
    opens, closes, omsg = bpos[0::2], bpos[1::2], bmsg[0::2]
    _check_separators(body, bad, opens, closes, omsg, mstart, mend)
    status, sym_start, sym_len = _find_instruments(buf, body, bad, qpos, opens, closes, omsg)
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

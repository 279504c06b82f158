"""The span router: the hot path, for batches of feed-shaped messages, straight from the arena.

Theory of operation. The balancer hands over the receive arena as a uint8 array and the payload
spans of a batch of complete messages (int64 arrays, feed order). Nothing is copied or joined:

1. Special bytes: min and max of the batch's region, with the frame headers blanked to spaces
   for the moment. Inside a payload only tab/newline/CR may fall outside 0x20..0x7F (other
   control bytes or non-ASCII send the whole batch the general way, which knows unicode and
   rejects invalid JSON); so what is routed here is ASCII, hence valid UTF-8.
2. Object ends: one pass finds every "}" (the headers still blanked). Each must be followed by ","
   or by the message's closing "]", so the k-th "}" followed by "]" ends the k-th non-empty
   message (no search for owners); each object start is derived from the previous end ("," then
   "{", or ", {") and checked, so braces need no second pass.
3. Key layout: every object must open with the feed's own prefix, compact `{"ev":"X","sym":"` or
   spaced `{"ev": "X", "sym": "` (X: 1-7 bytes; a fast lane for one byte: T, Q). In valid JSON
   such a prefix cannot start inside a string (its first quote would close the string, and `ev`
   cannot follow a string), and a "}" inside a string is never followed by such a prefix -- so
   for valid JSON the split is exact. Crypto and forex aggregates name the instrument `pair` in
   that place, forex quotes (ev "C") `p`; as a "sym" key anywhere in the object would win, and
   for p a "pair" key (tb.route.fast_rules), such an object must hold no "y" (nor "r", for p)
   and no backslash. A status object goes the general way whatever its keys.
4. Symbols: read as little-endian words after the prefix (one word for most tickers, up to
   SYM_ROW bytes); the first quote ends the symbol (a backslash in it, or no quote within
   SYM_ROW, sends the batch the general way). The hash takes the zero-padded bytes (mixed: the
   words as read).
5. Output: stable radix sort by pipe; each record goes out as one fixed-width row holding its u32
   header and its bytes, read and written in feed order; a row's spill past its record is
   overwritten by later rows of its pipe, or lands in the gap of one row width left after each
   pipe's run (see _build). The runs are slices of one reused buffer.

`route_frames` does the same for a large receive straight from the frames: its "}" pass also
finds the frame headers (each feed message ends with "}]", and the next header follows at once),
so the receive needs no frame scan of its own (a pass over the buffer, ~2 ms per 4 MiB of
1-5-trade frames). Whatever it cannot place that way it leaves to scan_data_frames.

The small lane (tb.route.small) applies the same rules to small batches in plain Python (numpy's
fixed cost per call is ~0.5-1 ms). Both return None whenever a batch is not feed-shaped (a status
message, other key orders, escapes, unicode, nesting): the caller then routes the same messages
with Router.route, whose output these lanes reproduce byte for byte on valid JSON
(tests/route/test_router_props.py at random splits, tests/route/test_spans.py, tests/fuzz). The
documented limit: the grammar inside an object is not checked, and unlike Router they do not check
that its quotes pair up -- invalid JSON such as an unterminated string inside an object is passed
on as the feed sent it, where Router counts it malformed.
"""

from __future__ import annotations

import numpy as np

from ..bytefind import find_all
from .batch import RouteBatch
from .fast_rules import le
from .hashing import VECTOR_HASHES, pipes_mixed_words
from .plan import PlanTable
from .scratch import Scratch

__all__ = ["route_spans", "route_frames", "SPAN_PAD", "ROW", "SYM_ROW"]

ROW = 188  # record bytes per row: a row costs ~35 ns whatever its width, and trades fit
SYM_ROW = 32  # symbol row width (8, 16, 32 or 64): longer symbols go the general way
# bytes the arena must have after the batch: row and word reads run past the last object
SPAN_PAD = 256  # >= 4 + ROW, and >= SYM_ROW

_U64 = np.uint64


_COMPACT = le(b'{"ev":"')  # 7 bytes
_SPACED = le(b'{"ev": "')  # 8 bytes
_M7 = _U64((1 << 56) - 1)
_SYM_COMPACT = le(b',"sym":"')  # 8 bytes
_SYM_SPACED = le(b', "sym":')  # 8 bytes, then ' "'
_SP_Q = le(b' "')
_PAIR_COMPACT = le(b',"pair":')  # 8 bytes, then '"'
_PAIR_SPACED = le(b', "pair"')  # 8 bytes, then ': "'
_P_COMPACT = le(b',"p":"')  # 6 bytes
_M6 = _U64((1 << 48) - 1)
_P_SPACED = le(b', "p": "')  # 8 bytes
_STATUS = le(b"status")
KEY_SYM, KEY_PAIR, KEY_P = 0, 1, 2  # what names an object's instrument
_COLON_SP = le(b": ")
# the fast lane, a one-byte ev (T, Q, A, ...): '{"ev":"' X '","sym":' '"' (17 bytes), or spaced
# '{"ev": "' X '", "sym' '": "' (20 bytes)
_ONE_COMPACT_TAIL = le(b'","sym":')
_ONE_SPACED_TAIL, _ONE_SPACED_END = le(b'", "sym'), le(b'": "')
# the pair lane, a two-byte ev (crypto XT/XQ/XA, forex CA) keyed by pair, compact:
# '{"ev":"' XY '","pair":"' (19 bytes)
_TWO_PAIR_TAIL, _TWO_PAIR_END, _M3 = le(b'","pair'), le(b'":"'), _U64((1 << 24) - 1)
_M4 = _U64((1 << 32) - 1)
# ... and spaced: '{"ev": "' XY '", "pair": "' (22 bytes)
_TWO_PAIR_SPACED_TAIL, _TWO_PAIR_SPACED_END = le(b'", "pa'), le(b'ir": "')
# _LOW_BYTES[k]: a mask of the low k bytes of a word
_BYTE = _U64(0xFF)
# the long-symbol lane: a row's quote flags as one unsigned int (SYM_ROW bits), and
# _SYM_MASKS[k]: SYM_ROW bytes, the first k of them 0xFF, as one void item
_FLAGS = np.dtype(f"<u{SYM_ROW // 8}")
_ONE = _FLAGS.type(1)
_SYM_MASKS = (
    (np.arange(SYM_ROW)[None, :] < np.arange(SYM_ROW + 1)[:, None]).astype(np.uint8) * 0xFF
).view(f"V{SYM_ROW}")[:, 0]
_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)


def _view(a: np.ndarray, dtype: type) -> np.ndarray:
    """Element i = the itemsize bytes at a[i] (unaligned, overlapping, no copy)."""
    size = np.dtype(dtype).itemsize
    return np.ndarray((len(a) - size + 1,), dtype, buffer=a, strides=(1,))


def _first_byte(words: np.ndarray, byte: int) -> np.ndarray:
    """Index of the first `byte` in each little-endian uint64 word (8 if none).

    SWAR zero-byte test on word ^ pattern: its lowest flagged byte is exact (borrows only flag
    bytes above a real zero), so the bits below the lowest flag, over 8, give the index."""
    t = words ^ _U64(0x0101010101010101 * byte)
    flags = (t - _U64(0x0101010101010101)) & ~t & _U64(0x8080808080808080)
    below = (flags & (~flags + _U64(1))) - _U64(1)  # the bits below the lowest flag (all if none)
    return np.minimum(np.bitwise_count(below) >> 3, 8).astype(np.int64)


def _has_byte(words: np.ndarray, byte: int) -> bool:
    """Whether any little-endian uint64 word holds `byte` (the SWAR zero-byte test: exact for
    "any", as its borrows only flag bytes above a real zero)."""
    t = words ^ _U64(0x0101010101010101 * byte)
    return bool(((t - _U64(0x0101010101010101)) & ~t & _U64(0x8080808080808080)).any())


def _header_positions(starts: np.ndarray, ends: np.ndarray, lo: int) -> np.ndarray:
    """Every byte between one payload's end and the next payload's start (the frame headers)."""
    gap_from = np.concatenate(([lo], ends[:-1]))
    gap_len = starts - gap_from
    total = int(gap_len.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    return np.repeat(gap_from - (np.cumsum(gap_len) - gap_len), gap_len) + np.arange(total)


def route_spans(
    a: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    npipes: int,
    hash_name: str = "mixed",
    scratch: Scratch | None = None,
    plan: PlanTable | None = None,
) -> RouteBatch | None:
    """Route the messages a[starts[i]:ends[i]]; None if the batch is not feed-shaped.

    `a` must extend at least SPAN_PAD bytes beyond ends[-1]. With `scratch`, the runs returned
    are valid until the next call with the same scratch (without it, a new buffer each call).
    With `plan`, its symbols go to their planned pipes (its hash is hash_name).
    """
    nmsg = len(starts)
    if nmsg == 0:
        return None
    lo, hi = int(starts[0]), int(ends[-1])
    if hi - lo < 2 or len(a) < hi + SPAN_PAD:  # not even "[]": the general way counts it
        return None
    region = a[lo:hi]
    # 1. bytes outside 0x20..0x7F inside payloads: min/max of the region with the frame headers
    #    blanked to spaces for the moment (pinned by test_spans.py::test_unicode_and_control...).
    keep_out = scratch is not None
    scratch = scratch or Scratch()
    hdr = _header_positions(starts, ends, lo)
    saved = a[hdr]
    a[hdr] = 0x20
    try:
        if not _printable(region):
            return None
        # 2. object ends: every "}" (with the headers blanked, every one found is payload)
        close = find_all(region, 0x7D, scratch.bools(len(region) + 63)) + lo
    finally:
        a[hdr] = saved
    return _route_objects(
        a, starts, ends, close, hdr, npipes, hash_name, scratch if keep_out else None, plan=plan
    )


def route_frames(
    a: np.ndarray,
    pos: int,
    end: int,
    max_message: int,
    npipes: int,
    hash_name: str = "mixed",
    scratch: Scratch | None = None,
    plan: PlanTable | None = None,
):
    """Find the plain text frames at the start of a[pos:end] and route them, in one byte pass.

    The "}" pass that finds the objects' ends also finds the frames: a feed message ends with
    "}]" and the next frame's header follows at once, so the headers are where the k-th "}]"
    ends (verified: each one must be a final TEXT frame whose payload ends exactly at the next
    "}]"). This replaces scan_data_frames' own pass over the buffer for large receives.

    Returns None when the frames cannot be placed that way (a "}]" that is not a message end,
    an empty message, a frame that is not a plain text frame before the last "}]"): the caller
    scans with scan_data_frames. Otherwise (batch, starts, ends, stop): the complete messages'
    spans, where the plain text frames stop (a partial frame, a control frame, the end), and
    their batch -- None when they are not feed-shaped (the caller routes the spans the general
    way). `a` must extend at least SPAN_PAD bytes beyond `end`.
    """
    if end - pos < 4 or len(a) < end + SPAN_PAD:
        return None
    keep_out = scratch is not None
    scratch = scratch or Scratch()
    seg = a[pos:end]
    close = find_all(seg, 0x7D, scratch.bools(len(seg) + 63)) + pos
    if len(close) and close[-1] == end - 1:  # its successor is not here yet
        close = close[:-1]
    sep = a[close + 1]  # what follows each "}"
    m = close[sep == 0x5D]  # message ends, and maybe a "}]" elsewhere
    k = len(m)
    if not k:
        return None
    # the header of frame i starts at pos (i = 0) or right after the (i-1)-th "}]"; frame k is
    # where the plain frames stop. Bytes past `end` are stale: every test below is decided by
    # bytes before it (a complete frame i < k ends at m[i] + 2 <= end).
    h = np.empty(k + 1, dtype=np.int64)
    h[0] = pos
    h[1:] = m + 2
    b0 = a[h]
    b1 = a[h + 1].astype(np.int64)
    short = b1 < 126
    hl = np.where(short, 2, 4)
    length = np.where(short, b1, (a[h + 2].astype(np.int64) << 8) | a[h + 3])
    huge = np.flatnonzero(b1 == 127)
    if len(huge):  # 64-bit lengths (messages of 64 KiB or more), capped past the limit
        word = _view(a, ">u8")[h[huge] + 2]
        length[huge] = np.minimum(word, max_message + 1)
        hl[huge] = 10
    e = h + hl + length
    ok = (b0[:k] == 0x81) & (b1[:k] <= 127) & (e[:k] == m + 2) & (length[:k] <= max_message)
    if not ok.all():
        return None
    stop = int(h[k])
    if stop + 2 <= end and b0[k] == 0x81 and b1[k] <= 127 and e[k] <= end:
        return None  # a complete text frame without "}]" at its end: "[]", or not feed-shaped
    ends = e[:k]
    starts = ends - length[:k]
    lo, hi = int(starts[0]), int(ends[-1])
    first, last = np.searchsorted(close, lo), np.searchsorted(close, hi)
    close, sep = close[first:last], sep[first:last]
    # the headers between the payloads; a length byte 0x7D there is no object's end
    hs = h[1:k]
    wide = hs[~short[1:k]]
    hdr = np.concatenate((hs, hs + 1, wide + 2, wide + 3))
    if len(huge):
        long = h[huge[(huge >= 1) & (huge < k)]]
        hdr = np.concatenate((hdr, (long[:, None] + np.arange(4, 10)).ravel()))
    saved = a[hdr]
    stray = hdr[saved == 0x7D]
    if len(stray):
        at = np.searchsorted(close, np.sort(stray))
        close, sep = np.delete(close, at), np.delete(sep, at)
    a[hdr] = 0x20
    try:
        printable = _printable(a[lo:hi])
    finally:
        a[hdr] = saved
    if not printable:
        return None, starts, ends, stop
    batch = _route_objects(
        a, starts, ends, close, hdr, npipes, hash_name, scratch if keep_out else None, sep, plan
    )
    return batch, starts, ends, stop


def _printable(region: np.ndarray) -> bool:
    """Whether every byte is printable ASCII or tab/newline/CR (min/max first: two fast passes)."""
    low, high = int(region.min()), int(region.max())
    if high >= 0x80:
        return False
    if low < 0x20:
        # tab/newline/CR are whitespace; any other control byte sends the batch the general way
        ctrl = region[np.flatnonzero(region < 0x20)]
        if not np.isin(ctrl, (9, 10, 13)).all():
            return False
    return True


def _route_objects(
    a: np.ndarray,
    starts,
    ends,
    close,
    hdr,
    npipes: int,
    hash_name: str,
    scratch: Scratch | None,
    sep: np.ndarray | None = None,
    plan: PlanTable | None = None,
) -> RouteBatch | None:
    """Steps 2-5 from every payload "}" (`close`, sorted) of the messages a[starts[i]:ends[i]],
    whose frame headers between them are at `hdr` (`sep`: the bytes after each "}",
    a[close + 1], if already gathered; it is overwritten)."""
    if not ((a[starts] == 0x5B).all() and (a[ends - 1] == 0x5D).all()):  # "[" ... "]"
        return None
    # Messages of more than "[]" hold objects. The last object of a message is the one followed
    # by "]" and ends right before the message's "]"; the others are followed by ",". So the k-th
    # object followed by "]" closes the k-th message that holds objects, and no "}" lies
    # elsewhere: between messages there are only (blanked) headers and "[]".
    full = np.flatnonzero(ends - starts > 2)
    n = len(close)
    if n == 0:
        return _empty(npipes) if not len(full) else None
    if sep is None:
        sep = a[close + 1]
    lasts = np.flatnonzero(sep == 0x5D)
    if (
        len(lasts) != len(full)
        or not len(lasts)
        or lasts[-1] != n - 1
        or not (close[lasts] + 2 == ends[full]).all()
    ):
        return None
    sep[lasts] = 0x2C
    if not (sep == 0x2C).all():
        return None
    firsts = np.empty_like(lasts)
    firsts[0] = 0
    firsts[1:] = lasts[:-1] + 1
    # object starts: right after "[" for the first of a message, after "," or ", " for the others
    start = np.empty(n, dtype=np.int64)
    start[1:] = close[:-1] + 2
    start[firsts] = starts[full] + 1
    multi = np.flatnonzero(lasts[:64] > firsts[:64])  # early messages with a "," in them
    if len(multi) and a[start[firsts[multi[0]] + 1]] == 0x20:
        # ", {" (json.dumps' default style) in this batch: one byte further where a space is,
        # before the rows are read (else nearly every row would be read twice, below)
        start += a[start] == 0x20
    # each object's first 24 bytes as three words, in one gather: the "{" and the key prefix
    obj = _rows(a, len(a) - 24, 24)[start].view(np.uint64).reshape(n, 3)
    gap = np.flatnonzero((obj[:, 0] & _BYTE) != 0x7B)
    if len(gap):  # ", {" (json.dumps' default style) for these, or "[ {"
        start[gap] += 1
        if not ((a[start[gap]] == 0x7B).all() and (a[start[gap] - 1] == 0x20).all()):
            return None
        obj[gap] = _rows(a, len(a) - 24, 24)[start[gap]].view(np.uint64).reshape(len(gap), 3)
    # 3. the key layout; the fast lane is a one-byte ev (trades T, quotes Q, ...), compact or
    #    spaced. (Its byte is never a quote or backslash in valid JSON: the prefix would not parse.)
    w64 = _view(a, np.uint64)
    head, second, after = obj[:, 0], obj[:, 1], obj[:, 2]  # after: bytes 16-23
    compact = spaced = sym_at = first_word = None
    lead_spaced = head[0] == _SPACED  # (a json.dumps-style batch tries its own lanes first)
    if lead_spaced:
        spaced = _one_spaced(head, second, after)
        if spaced.all():
            sym_at = start + 20
    else:
        compact = _one_compact(head, second, after)
        if compact.all():
            sym_at = start + 17
            first_word = after >> _U64(8)  # 7 symbol bytes; the top byte (0) is never a quote
            known = 7
    if sym_at is None:
        pair_at = _pair_lane(head, second, after, lead_spaced)
        if pair_at:
            sym_at = start + pair_at
            if not _keys_decide(a, starts, ends, hdr, close, np.full(n, KEY_PAIR, np.uint8)):
                return None
        else:
            if compact is None:
                compact = _one_compact(head, second, after)
            if spaced is None:
                spaced = _one_spaced(head, second, after)
            sym_at = np.where(spaced, start + 20, start + 17)
            if not (compact | spaced).all():
                found = _sym_positions(a, w64, start, head)
                if found is None:
                    return None
                sym_at, kind = found
                if kind is not None and not _keys_decide(a, starts, ends, hdr, close, kind):
                    return None
    if first_word is None:
        first_word = w64[sym_at]
        known = 8
    # 4. symbols: the first quote ends the symbol (most tickers fit the word already read)
    sym_len = _first_byte(first_word, 0x22)
    short = bool((sym_len < known).all())
    if not short:
        # a longer one (options: O:SPY251219C00650000): every symbol as one SYM_ROW-byte row,
        # its first quote the lowest bit of the row's packed quote flags
        rows = _rows(a, len(a) - SYM_ROW, SYM_ROW)[sym_at].view(np.uint8).reshape(n, SYM_ROW)
        quote = np.packbits(rows == 0x22, axis=1, bitorder="little").view(_FLAGS)[:, 0]
        if not quote.all():  # no quote within SYM_ROW bytes
            return None
        sym_len = np.bitwise_count((quote & (~quote + _ONE)) - _ONE).astype(np.int64)
    if not sym_len.all() or (sym_at + sym_len >= close).any():
        return None
    width = int(sym_len.max())
    # little-endian words: the symbol's bytes, then zeros. An escape in a symbol sends the batch
    # the general way (which decodes it).
    if short:
        sym_word = first_word & _LOW_BYTES[sym_len]
        if _has_byte(sym_word, 0x5C):
            return None
        if plan is not None:  # planned pipes, the hash for the others (tb.route.plan)
            pipes = plan.pipes_of_words(sym_word, sym_len, npipes, width)
        elif hash_name == "mixed":  # the word is what the mixed hash takes
            pipes = pipes_mixed_words(sym_word, npipes)
        else:
            rows = sym_word[:, None].view(np.uint8)[:, :width]
            pipes = VECTOR_HASHES[hash_name](rows, sym_len, npipes)
    else:
        words = rows.view(np.uint64)  # the same bytes
        words &= _SYM_MASKS[sym_len].view(np.uint64).reshape(n, -1)
        if (rows == 0x5C).any():
            return None
        if plan is not None:
            pipes = plan.pipes_of_words(words[:, : (width + 7) // 8], sym_len, npipes, width)
        elif hash_name == "mixed":
            pipes = pipes_mixed_words(words[:, : (width + 7) // 8], npipes)
        else:
            pipes = VECTOR_HASHES[hash_name](rows[:, :width], sym_len, npipes)
    # uint8 pipe numbers: numpy's stable radix sort takes one pass over them
    pipes = pipes.astype(np.uint8 if npipes <= 256 else np.uint16)
    return _build(a, start, close, pipes, npipes, scratch)


def _one_compact(head: np.ndarray, second: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per object, from its first three words: '{"ev":"' X '","sym":"' (the symbol at byte 17)."""
    return ((head & _M7) == _COMPACT) & (second == _ONE_COMPACT_TAIL) & ((after & _BYTE) == 0x22)


def _one_spaced(head: np.ndarray, second: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per object: '{"ev": "' X '", "sym": "' (json.dumps' default style, the symbol at 20)."""
    return (
        (head == _SPACED)
        & ((second >> _U64(8)) == _ONE_SPACED_TAIL)
        & ((after & _M4) == _ONE_SPACED_END)
    )


def _pair_lane(head: np.ndarray, second: np.ndarray, after: np.ndarray, spaced: bool) -> int:
    """Where the pair starts (19, or 22 spaced) if every object starts '{"ev":"' XY '","pair":"'
    or, spaced, '{"ev": "' XY '", "pair": "', X and Y no quote (from its first three words): a
    two-byte ev keyed by pair; else 0. (A backslash, in ev or anywhere, sends the batch the
    general way: _keys_decide.)"""
    if spaced:
        lead = (head == _SPACED) & ((second >> _U64(16)) == _TWO_PAIR_SPACED_TAIL)
        if not lead.all() or not ((after & _M6) == _TWO_PAIR_SPACED_END).all():
            return 0
        ev = second & _U64(0xFFFF)  # the two ev bytes, zeros above
    else:
        if not (((head & _M7) == _COMPACT) & ((second >> _U64(8)) == _TWO_PAIR_TAIL)).all():
            return 0
        if not ((after & _M3) == _TWO_PAIR_END).all():
            return 0
        ev = (head >> _U64(56)) | ((second & _BYTE) << _U64(8))
    if _has_byte(ev, 0x22):
        return 0
    return 22 if spaced else 19


def _sym_positions(a: np.ndarray, w64: np.ndarray, start: np.ndarray, head: np.ndarray):
    """Where each instrument starts, for any ev value of 1-7 bytes followed by the key sym or
    pair (crypto, forex aggregates), or ev "C" followed by p (forex quotes); None if not so.

    Returns (positions, kind): kind is None when every object is keyed by sym, else per object
    KEY_SYM, KEY_PAIR or KEY_P (the caller must rule out a sym or pair key further on)."""
    compact = (head & _M7) == _COMPACT
    spaced = head == _SPACED
    if not (compact | spaced).all():
        return None
    ev_at = start + np.where(compact, 7, 8)
    ev = w64[ev_at]
    ev_len = _first_byte(ev, 0x22)  # the quote closing ev
    if not ((ev_len >= 1) & (ev_len <= 7)).all():
        return None
    if ((ev_len == 6) & ((ev & _M6) == _STATUS)).any():
        return None  # a status object, whatever its keys: the general way
    quote = ev_at + ev_len
    nxt = w64[quote + 1]
    u16 = _view(a, np.uint16)
    sym = np.where(compact, nxt == _SYM_COMPACT, (nxt == _SYM_SPACED) & (u16[quote + 9] == _SP_Q))
    if sym.all():
        return quote + np.where(compact, 9, 11), None
    pair = np.where(
        compact,
        (nxt == _PAIR_COMPACT) & (a[quote + 9] == 0x22),
        (nxt == _PAIR_SPACED) & (u16[quote + 9] == _COLON_SP) & (a[quote + 11] == 0x22),
    )
    kind = np.where(sym, KEY_SYM, KEY_PAIR).astype(np.uint8)
    if not (sym | pair).all():
        forex = (ev_len == 1) & (a[ev_at] == 0x43)  # ev "C", a forex quote: its pair is in p
        p = forex & np.where(compact, (nxt & _M6) == _P_COMPACT, nxt == _P_SPACED)
        if not (sym | pair | p).all():
            return None
        kind[p] = KEY_P
    at = quote + np.where(compact, np.where(sym, 9, 10), np.where(sym, 11, 12))
    keyed_p = kind == KEY_P
    at[keyed_p] = (quote + np.where(compact, 7, 9))[keyed_p]
    return at, kind


def _keys_decide(a: np.ndarray, starts, ends, hdr, close, kind) -> bool:
    """Whether the keys found decide the instrument: no object keyed by pair holds a "sym" key,
    and no forex quote keyed by p holds a "sym" or "pair" key, wherever in the object.

    The placement rule (tb.route.fast_rules) is sym, else pair, else p: an object whose first
    key names its instrument another way goes by sym or pair if it has that key. Ruled out by
    bytes: such an object holds no "y" (nor "r", for p) and no backslash (an escaped key)."""
    lo, hi = int(starts[0]), int(ends[-1])
    chars = b"y\\r" if (kind == KEY_P).any() else b"y\\"
    saved = a[hdr]
    a[hdr] = 0x20  # a frame header's byte is no key's
    try:
        if not _holds_any(a, lo, hi, chars):
            return True
        region = a[lo:hi]
        hit = region == chars[0]
        for c in chars[1:]:
            hit |= region == c
        at = np.flatnonzero(hit) + lo
    finally:
        a[hdr] = saved
    # each hit lies in an object (between objects are only separators): the first that ends
    # at or after it
    owner = kind[np.searchsorted(close, at)]
    return not (((owner == KEY_PAIR) & (a[at] != 0x72)) | (owner == KEY_P)).any()


def _holds_any(a: np.ndarray, lo: int, hi: int, chars: bytes) -> bool:
    """Whether a[lo:hi] holds any of `chars`: by the bytes' own find (memchr) when `a` is
    np.frombuffer of a bytearray (the balancer's arena), else by numpy."""
    base = a.base
    buf = base.obj if isinstance(base, memoryview) else None
    if isinstance(buf, bytearray) and base.nbytes == a.nbytes == len(buf):
        return any(buf.find(c, lo, hi) >= 0 for c in chars)
    region = a[lo:hi]
    return any(bool((region == c).any()) for c in chars)


def _rows(buf: np.ndarray, count: int, width: int) -> np.ndarray:
    """Element i = the `width` bytes at buf[i], as one void item (overlapping, no copy)."""
    return np.ndarray((count,), dtype=f"V{width}", buffer=buf, strides=(1,))


def _build(a: np.ndarray, start, close, pipes, npipes: int, scratch: Scratch | None) -> RouteBatch:
    """5. One contiguous run per pipe, built from fixed-width row copies.

    Every record goes out as a row [u32 length][its first `row` bytes][spill], read from 4 bytes
    before the record (those 4 then replaced by the length); the rare record longer than ROW
    gets the rest by an exact copy afterwards. Rows are read and written in feed order, which
    within a pipe is output order: a row's spill past its record lands on later records of the
    same pipe, written after it. The runs lie one row width apart in the buffer, so the spill
    of a pipe's last row lands in that gap, never on the next pipe's records.
    """
    n = len(start)
    order = np.argsort(pipes, kind="stable")  # small unsigned ints: numpy's radix sort
    sorted_pipes = pipes[order]
    lens = close - start + 1
    # rows as wide as the batch's longest record (a 4-byte multiple), at most ROW: copying a
    # narrower row is cheaper
    longest = int(lens.max())
    row = min(ROW, (longest + 3) & ~3)
    width = 4 + row
    sizes = lens + 4
    sorted_sizes = sizes[order]
    offs = np.cumsum(sorted_sizes) - sorted_sizes
    total = int(offs[-1] + sorted_sizes[-1])
    dest = np.empty(n, dtype=np.int64)
    dest[order] = offs + np.multiply(sorted_pipes, width, dtype=np.int64)  # gaps between runs
    size = total + npipes * width + 4
    out = scratch.output(size) if scratch else np.empty(size, dtype=np.uint8)
    # one row per record: its header and its first ROW bytes. A row is one element of a void
    # dtype at every byte offset (one memcpy per row: ~25% cheaper than 2-D uint8 rows)
    staged = _rows(a, len(a) - width, width)[np.maximum(start - 4, 0)]
    stage = staged.view(np.uint8).reshape(n, width)
    if start[0] < 4:  # a record at the very start of the arena (starts increase)
        for k in np.flatnonzero(start < 4).tolist():
            m = min(int(lens[k]), row)
            stage[k, 4 : 4 + m] = a[int(start[k]) : int(start[k]) + m]
    # the 4 bytes before each record become its u32 LE length (rows are 4-byte multiples)
    stage.view("<u4")[:, 0] = lens
    # Fancy assignment writes rows in index order (pinned by test_spans.py byte-for-byte tests).
    _rows(out, size - width + 1, width)[dest] = staged
    view = memoryview(out)
    arena = memoryview(a)
    if longest > row:
        for k in np.flatnonzero(lens > row).tolist():  # the rare record longer than its row
            o, s0, m = int(dest[k]) + 4, int(start[k]), int(lens[k])
            view[o + row : o + m] = arena[s0 + row : s0 + m]
    bounds = np.searchsorted(sorted_pipes, np.arange(npipes + 1))
    counts = np.diff(bounds).tolist()
    byte_bounds = np.concatenate((offs, [total]))[bounds]
    firsts = (byte_bounds[:-1] + np.arange(npipes) * width).tolist()
    runs: list = [
        view[first : first + length] if length else None
        for first, length in zip(firsts, np.diff(byte_bounds).tolist(), strict=True)
    ]
    return RouteBatch(runs=runs, counts=counts, events=n, routed=n)


def _empty(npipes: int) -> RouteBatch:
    return RouteBatch(runs=[None] * npipes, counts=[0] * npipes)

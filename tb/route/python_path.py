"""The pure-Python router: bytes.find and compiled regexes per object, for small batches.

It implements tb.route.fast_rules exactly (the numpy path implements the same rules vectorized,
and tests/route/test_router_props.py checks the two give byte-identical batches).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Sequence

from .batch import MAX_ERRORS, RouteBatch
from .fast_rules import MAX_FAST_SYMBOL
from .slow import route_slowly

__all__ = ["route_python"]

_WS = rb"[ \t\n\r]*"
_WS_BYTES = b" \t\n\r"
# Rule 1 (with isascii and no backslash): what is left after deleting these is a control byte
# (test_router.py: test_control_bytes_take_the_slow_path, test_unicode_symbols_...).
_ALLOWED = bytes(range(32, 128)) + b"\t\n\r"
# Rule 4: after a key, ws : ws and the value's opening quote.
_TO_VALUE = re.compile(_WS + b":" + _WS + b'"')
_LEN = struct.Struct("<I").pack
_COLON, _QUOTE, _COMMA = 0x3A, 0x22, 0x2C


def _value(msg: bytes, at: int, end: int) -> int:
    """Start of the string value when msg[at:] is ``ws : ws "``, else -1."""
    # Compact style decided by two byte reads, no regex call (test_router.py: whitespace).
    if msg[at] == _COLON and msg[at + 1] == _QUOTE:
        return at + 2
    m = _TO_VALUE.match(msg, at, end)
    return -1 if m is None else m.end()


def _interesting_ev(msg: bytes, start: int, end: int) -> tuple[int, bool]:
    """Rule 4b for one object: (0 none / 1 status / 2 forex quote, refused?)."""
    found, kind = 0, 0
    at = msg.find(b'"ev"', start, end)
    while at != -1:  # finds overlapping occurrences too, as the numpy path counts them
        found += 1
        v = _value(msg, at + 4, end)
        if v != -1 and msg.startswith(b'status"', v):
            kind = 1
        elif v != -1 and msg.startswith(b'C"', v):
            kind = 2
        at = msg.find(b'"ev"', at + 1, end)
    return kind, found > 1 and kind != 0


def _string_value(msg: bytes, start: int, end: int, key: bytes) -> tuple[int, int]:
    """Rule 4a: (start, end) of the value of the FIRST ``key`` in the object; (-1, -1) none;
    (-2, -2) when it is not a key with a string value closing inside the object."""
    at = msg.find(key, start, end)
    if at == -1:
        return -1, -1
    if msg.startswith(key[1:], at + len(key) - 1):  # "pair"pair": overlapping occurrences
        return -2, -2
    v = _value(msg, at + len(key), end)
    v_end = -1 if v == -1 else msg.find(b'"', v, end)
    return (-2, -2) if v_end == -1 else (v, v_end)


def _forex_p(msg: bytes, start: int, end: int) -> tuple[int, int]:
    """Rule 4c: the value span of ``"p"`` in a forex quote; (-1, -1) none; (-2, -2) refuse."""
    at = msg.find(b'"p"', start, end)
    if at == -1:
        return -1, -1
    if msg.find(b'"p"', at + 1, end) != -1:
        return -2, -2
    v = _value(msg, at + 3, end)
    if v == -1:
        return -1, -1  # "p" that is not a key with a string value: no instrument
    v_end = msg.find(b'"', v, end)
    return (-2, -2) if v_end == -1 else (v, v_end)


def _scan_uniform(msg: bytes, start: int, pipe_of, cache: dict[bytes, int]):
    """The common case, fast: stocks objects (no pair, no status, no forex quote) with ONE
    separator style throughout, cut with a single bytes.split. Same rules as _scan_fast, which
    takes over (returning the same verdict) whenever this returns None."""
    end = msg.rfind(b"}")
    first_end = msg.find(b"}", start)
    after = msg.find(b"{", start + 1)
    if after == -1:
        sep = b""
        pieces = [msg[start + 1 : end]]
    elif first_end < after and msg[first_end + 1 : after].strip(_WS_BYTES) == b",":
        sep = msg[first_end : after + 1]
        pieces = msg[start + 1 : end].split(sep)
    else:
        return None
    nobj = len(pieces)
    # Rules 2-3: with one { and } per piece boundary and no others, the objects are flat and
    # separated by `sep` alone (test_router.py: whitespace, nested, mixed separators).
    if msg.count(b"{") != nobj or msg.count(b"}") != nobj:
        return None
    if msg[end + 1 :].strip(_WS_BYTES) != b"]":
        return None
    records: list[tuple[int, int, int]] = []
    no_symbol = 0
    step = len(sep)
    at_obj = start
    for piece in pieces:
        if piece.count(b'"') & 1:  # rule 2: a brace of ours would sit inside a string
            return None
        at = piece.find(b'"sym"')
        if at == -1:
            no_symbol += 1
        else:
            if piece.startswith(b'sym"', at + 4):  # "sym"sym": overlapping occurrences
                return None
            if piece.startswith(b':"', at + 5):
                sym = at + 7
            else:
                m = _TO_VALUE.match(piece, at + 5)
                if m is None:
                    return None
                sym = m.end()
            sym_end = piece.find(b'"', sym)
            if sym_end == -1 or sym_end - sym > MAX_FAST_SYMBOL:
                return None
            key = piece[sym:sym_end]
            pipe = cache.get(key)
            records.append(
                (at_obj, at_obj + len(piece) + 2, pipe_of(key) if pipe is None else pipe)
            )
        at_obj += len(piece) + step
    if msg.count(b'"sym"') != len(records):  # rule 4a: one occurrence per object
        return None
    return records, [], no_symbol


def _scan_fast(msg: bytes, pipe_of: Callable[[bytes], int], cache: dict[bytes, int]):
    """(records, statuses, no_symbol) for a message the fast rules place, else None."""
    find, count = msg.find, msg.count
    start = find(b"{")
    # Rule 1: isascii and `in` are C loops; deleting every allowed byte leaves the bad ones.
    if start == -1 or not msg.isascii() or b"\\" in msg or msg.translate(None, _ALLOWED):
        return None
    if msg[:start].strip(_WS_BYTES) != b"[":
        return None
    has_pair = b'"pair"' in msg
    # Without the bytes "status" or "C" no ev can be interesting (rule 4b): skip the look-up
    # (test_router.py: status and forex tests; test_both_paths_agree_on_tricky_bytes).
    ev_matters = b'"status"' in msg or b'"C"' in msg
    if not has_pair and not ev_matters:
        uniform = _scan_uniform(msg, start, pipe_of, cache)
        if uniform is not None:
            return uniform
    records: list[tuple[int, int, int]] = []
    statuses: list[tuple[int, dict]] = []
    no_symbol = n_sym = n_pair = kind = 0
    while True:
        end = find(b"}", start)
        after = find(b"{", start + 1)
        # Rules 2-3: flat (no { before this }), and no } inside a string (even quotes so far).
        if end == -1 or -1 < after < end or count(b'"', start, end) & 1:
            return None
        end += 1
        if ev_matters:
            kind, refuse = _interesting_ev(msg, start, end)
            if refuse:
                return None
        sym = sym_end = -1
        at = find(b'"sym"', start, end)
        if at != -1:  # rule 4a, inlined for the common case
            if msg.startswith(b'sym"', at + 4):  # "sym"sym": overlapping occurrences
                return None
            if msg[at + 5] == _COLON and msg[at + 6] == _QUOTE:
                sym = at + 7
            else:
                sym = _value(msg, at + 5, end)
            sym_end = find(b'"', sym, end) if sym != -1 else -1
            if sym_end == -1:
                return None
            n_sym += 1
        if has_pair:
            pair, pair_end = _string_value(msg, start, end, b'"pair"')
            if pair == -2:
                return None
            n_pair += pair >= 0
            if sym == -1:
                sym, sym_end = pair, pair_end
        if kind == 1:  # rule 6
            try:
                statuses.append((start, json.loads(msg[start:end].decode("ascii"))))
            except ValueError:
                return None
        else:
            if sym == -1 and kind == 2:
                sym, sym_end = _forex_p(msg, start, end)
                if sym == -2:
                    return None
            if sym >= 0:
                if sym_end - sym > MAX_FAST_SYMBOL:
                    return None
                key = msg[sym:sym_end]
                pipe = cache.get(key)
                records.append((start, end, pipe_of(key) if pipe is None else pipe))
            else:
                no_symbol += 1
        if after == -1:
            if msg[end:].strip(_WS_BYTES) != b"]":
                return None
            break
        if (after != end + 1 or msg[end] != _COMMA) and msg[end:after].strip(_WS_BYTES) != b",":
            return None
        start = after
    # Rule 4a: one occurrence per object, seen as: all of the message's are the ones found
    # (test_router.py: test_sym_as_a_value_or_duplicate_key_goes_slow_but_right).
    if count(b'"sym"') != n_sym or has_pair and count(b'"pair"') != n_pair:
        return None
    return records, statuses, no_symbol


def route_python(
    payloads: Sequence[bytes | bytearray | memoryview],
    npipes: int,
    pipe_of: Callable[[bytes], int],
    cache: dict[bytes, int],
) -> RouteBatch:
    """Route a batch object by object (see tb.route.Router.route_python).

    ``pipe_of`` maps a symbol to its pipe; ``cache`` is a dict it fills, read here directly.
    """
    runs: list[bytearray | None] = [None] * npipes
    counts = [0] * npipes
    batch = RouteBatch(runs=runs, counts=counts)  # type: ignore[arg-type]
    statuses = batch.statuses
    for index, payload in enumerate(payloads):
        msg = payload if isinstance(payload, bytes) else bytes(payload)
        fast = _scan_fast(msg, pipe_of, cache)
        if fast is not None:
            records, found, no_symbol = fast
        else:
            slow = route_slowly(msg, pipe_of)
            records, found, no_symbol = slow.records, slow.statuses, slow.no_symbol
            batch.fallback += slow.objects
            if slow.malformed:
                batch.malformed += 1
                if len(batch.errors) < MAX_ERRORS:
                    batch.errors.append(f"payload {index}: {slow.error}")
        for start, end, pipe in records:
            run = runs[pipe]
            if run is None:
                run = runs[pipe] = bytearray()
            run += _LEN(end - start)
            run += msg[start:end]
            counts[pipe] += 1
        statuses.extend(obj for _start, obj in found)
        batch.no_symbol += no_symbol
        batch.routed += len(records)
    batch.events = batch.routed + len(statuses) + batch.no_symbol
    return batch

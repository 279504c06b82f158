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
# Rule 1: a backslash, a control byte other than tab/newline/CR, or a non-ASCII byte.
_BAD_BYTE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\\\x80-\xff]")
# Rule 4: after a key, ws : ws and the value's opening quote.
_TO_VALUE = re.compile(_WS + b":" + _WS + b'"')
_LEN = struct.Struct("<I").pack
_COLON, _QUOTE, _COMMA = 0x3A, 0x22, 0x2C


def _value(msg: bytes, at: int, end: int) -> int:
    """Start of the string value when msg[at:] is ``ws : ws "``, else -1."""
    if msg[at] == _COLON and msg[at + 1] == _QUOTE:  # compact style: no regex call
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


def _scan_fast(msg: bytes, pipe_of: Callable[[bytes], int]):
    """(records, statuses, no_symbol) for a message the fast rules place, else None."""
    start = msg.find(b"{")
    if start == -1 or _BAD_BYTE.search(msg) is not None or msg[:start].strip(_WS_BYTES) != b"[":
        return None
    if b'"sym"sym"' in msg or b'"pair"pair"' in msg:  # rule 4a: overlapping occurrences
        return None
    records: list[tuple[int, int, int]] = []
    statuses: list[tuple[int, dict]] = []
    no_symbol = n_sym = n_pair = 0
    has_pair = b'"pair"' in msg
    # Without the bytes "status" or "C" no ev can be interesting (rule 4b): skip the look-up.
    ev_matters = b'"status"' in msg or b'"C"' in msg
    while True:
        end = msg.find(b"}", start)
        after = msg.find(b"{", start + 1)
        # Rules 2-3: flat (no { before this }), and no } inside a string (even quotes so far).
        if end == -1 or after != -1 and after < end or msg.count(b'"', start, end) & 1:
            return None
        end += 1
        kind, refuse = _interesting_ev(msg, start, end) if ev_matters else (0, False)
        if refuse:
            return None
        sym, sym_end = _string_value(msg, start, end, b'"sym"')
        if sym == -2:
            return None
        n_sym += sym >= 0
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
                records.append((start, end, pipe_of(msg[sym:sym_end])))
            else:
                no_symbol += 1
        if after == -1:
            if msg[end:].strip(_WS_BYTES) != b"]":
                return None
            break
        if (
            not (after == end + 1 and msg[end] == _COMMA)
            and msg[end:after].strip(_WS_BYTES) != b","
        ):
            return None
        start = after
    # Rule 4a: one occurrence per object, seen as: all of the message's are the ones found.
    if msg.count(b'"sym"') != n_sym or has_pair and msg.count(b'"pair"') != n_pair:
        return None
    return records, statuses, no_symbol


def route_python(
    payloads: Sequence[bytes | bytearray | memoryview], npipes: int, pipe_of: Callable[[bytes], int]
) -> RouteBatch:
    """Route a batch object by object (see tb.route.Router.route_python)."""
    runs: list[bytearray | None] = [None] * npipes
    counts = [0] * npipes
    batch = RouteBatch(runs=runs, counts=counts)  # type: ignore[arg-type]
    statuses = batch.statuses
    for index, payload in enumerate(payloads):
        msg = payload if isinstance(payload, bytes) else bytes(payload)
        fast = _scan_fast(msg, pipe_of)
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

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
# A flat object whose strings hold no quote or brace (rule 2-3); possessive: no backtracking.
_OBJ = rb'\{[^{}"]*+(?:"[^"{}]*+"[^{}"]*+)*+\}'
_STRUCTURE = re.compile(
    _WS + rb"\[" + _WS + _OBJ + rb"(?:" + _WS + b"," + _WS + _OBJ + rb")*+" + _WS + rb"\]" + _WS
)
# Rule 1: a backslash, a control byte other than tab/newline/CR, or a non-ASCII byte.
_BAD_BYTE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\\\x80-\xff]")
# Rule 4: after a key token, ws : ws and the value's opening quote.
_TO_VALUE = re.compile(_WS + b":" + _WS + b'"')
_LEN = struct.Struct("<I").pack

_NOT_FAST = -2  # _value_at: the message must go to the slow path


def _value_at(msg: bytes, start: int, end: int, key: bytes, strict: bool) -> int:
    """Index of the string value of token ``key`` (quotes included) in msg[start:end].

    -1 when no such token; _NOT_FAST for a duplicate key or (``strict``) a token that is not a
    key with a string value. A match counts only at an opening quote: an even number of quotes
    since the object's ``{`` (objects start at even parity once rule 2-3 hold).
    """
    found = -1
    at = msg.find(key, start, end)
    while at != -1:
        if not msg.count(b'"', start, at) & 1:
            m = _TO_VALUE.match(msg, at + len(key), end)
            if m is not None:
                if found != -1:
                    return _NOT_FAST
                found = m.end()
            elif strict:
                return _NOT_FAST
        at = msg.find(key, at + 1, end)
    return found


def _scan_fast(msg: bytes, pipe_of: Callable[[bytes], int]):
    """(records, statuses, no_symbol) for a message the fast rules place, else None."""
    if _BAD_BYTE.search(msg) is not None or _STRUCTURE.fullmatch(msg) is None:
        return None
    records: list[tuple[int, int, int]] = []
    statuses: list[tuple[int, dict]] = []
    no_symbol = 0
    has_pair = b'"pair"' in msg
    start = msg.find(b"{")
    while start != -1:
        # Rule 3 held, so the next } closes this object and no brace hides in a string.
        end = msg.find(b"}", start) + 1
        ev = _value_at(msg, start, end, b'"ev"', False)
        sym = _value_at(msg, start, end, b'"sym"', True)
        if ev == _NOT_FAST or sym == _NOT_FAST:
            return None
        if sym == -1 and has_pair:
            sym = _value_at(msg, start, end, b'"pair"', True)
            if sym == _NOT_FAST:
                return None
        elif has_pair and _value_at(msg, start, end, b'"pair"', True) == _NOT_FAST:
            return None
        if ev >= 0 and msg.startswith(b'status"', ev):
            try:
                statuses.append((start, json.loads(msg[start:end].decode("utf-8"))))
            except ValueError:
                return None
        else:
            if sym == -1 and ev >= 0 and msg.startswith(b'C"', ev):
                sym = _value_at(msg, start, end, b'"p"', False)
                if sym == _NOT_FAST:
                    return None
            if sym >= 0:
                sym_end = msg.find(b'"', sym)
                if sym_end - sym > MAX_FAST_SYMBOL:
                    return None
                records.append((start, end, pipe_of(msg[sym:sym_end])))
            else:
                no_symbol += 1
        start = msg.find(b"{", end)
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

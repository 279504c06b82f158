"""The slow path: one message routed by a real JSON parse, output still the feed's own bytes.

Both fast paths send here every message they cannot place (escapes, nested objects, braces in
strings, unusual values, long symbols, broken structure). The message is decoded with json.loads
(a key given twice keeps its first value, as the fast paths read it); the byte span of each
top-level object comes from a tokenizer that understands strings and escapes and tracks bracket
depth, so every routed record is exactly the bytes the feed sent.

A message that is not a JSON array of objects counts as malformed once; every complete top-level
object in it that parses on its own is still handled (routed, status, or no_symbol).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["SlowMessage", "classify_object", "object_spans", "route_slowly"]

# A string token (escapes understood; group 1 is empty when the string is unterminated) or one
# bracket. Strings are consumed whole so brackets inside them are never seen.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*("?)|[\[\]{}]', re.DOTALL)
_OPEN_OBJ, _CLOSE_OBJ, _OPEN_ARR, _CLOSE_ARR, _QUOTE = 0x7B, 0x7D, 0x5B, 0x5D, 0x22

ROUTE, STATUS, NO_SYMBOL = 0, 1, 2


@dataclass(slots=True)
class SlowMessage:
    """What the slow path made of one message (offsets are into that message)."""

    records: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, pipe)
    statuses: list[tuple[int, dict]] = field(default_factory=list)  # (start, object)
    no_symbol: int = 0
    malformed: bool = False
    error: str | None = None

    @property
    def objects(self) -> int:
        return len(self.records) + len(self.statuses) + self.no_symbol


def object_spans(msg: bytes) -> tuple[list[tuple[int, int]], bool]:
    """(start, end) of each complete top-level object, and whether the structure broke.

    Top level means not inside another object or a nested array: a bare object, or an element
    of an outermost array. Scanning stops at an unterminated string or a mismatched bracket.
    """
    spans: list[tuple[int, int]] = []
    stack: list[int] = []
    start = -1
    for m in _TOKEN.finditer(msg):
        at = m.start()
        tok = msg[at]
        if tok == _QUOTE:
            if not m.group(1):
                return spans, True
        elif tok == _OPEN_OBJ or tok == _OPEN_ARR:
            if tok == _OPEN_OBJ and (not stack or stack == [_OPEN_ARR]):
                start = at
            stack.append(tok)
        else:
            want = _OPEN_OBJ if tok == _CLOSE_OBJ else _OPEN_ARR
            if not stack or stack[-1] != want:
                return spans, True
            stack.pop()
            if tok == _CLOSE_OBJ and (not stack or stack == [_OPEN_ARR]):
                spans.append((start, at + 1))
    return spans, bool(stack)


def classify_object(obj: dict) -> tuple[int, bytes | None]:
    """(ROUTE, symbol bytes) / (STATUS, None) / (NO_SYMBOL, None) for one decoded event.

    The instrument is ``sym``, else ``pair``, else ``p`` for a forex quote (ev "C"); a present
    but non-string instrument means no symbol.
    """
    ev = obj.get("ev")
    if ev == "status":
        return STATUS, None
    if "sym" in obj:
        sym = obj["sym"]
    elif "pair" in obj:
        sym = obj["pair"]
    elif ev == "C":
        sym = obj.get("p")
    else:
        return NO_SYMBOL, None
    if isinstance(sym, str):
        return ROUTE, sym.encode("utf-8", "surrogatepass")
    return NO_SYMBOL, None


def _describe(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 at byte {exc.start}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc.msg} at byte {exc.pos}"
    return f"not JSON: {exc}"


def _first_wins(pairs: list) -> dict:
    """An object's members; a key given twice keeps its first value, as the fast paths read it
    (they take the first "sym"), so an object goes to the same pipe whichever path routes it."""
    obj: dict = {}
    for key, value in pairs:
        obj.setdefault(key, value)
    return obj


def _decode(raw: bytes) -> object:
    return json.loads(raw.decode("utf-8"), object_pairs_hook=_first_wins)


def route_slowly(msg: bytes, pipe_of: Callable[[bytes], int]) -> SlowMessage:
    """Route one message by decoding it. Never raises for bad data."""
    out = SlowMessage()
    try:
        doc = _decode(msg)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        doc, out.malformed, out.error = None, True, _describe(exc)
    else:
        if not isinstance(doc, list):
            out.malformed, out.error = True, f"not a JSON array but {type(doc).__name__}"
        else:
            bad = next((i for i, x in enumerate(doc) if not isinstance(x, dict)), None)
            if bad is not None:
                out.malformed = True
                out.error = f"array element {bad} is {type(doc[bad]).__name__}, not an object"
    spans, _broken = object_spans(msg)
    decoded: list | None = doc if not out.malformed and len(doc) == len(spans) else None
    for n, (start, end) in enumerate(spans):
        if decoded is not None:
            obj = decoded[n]
        else:
            try:
                obj = _decode(msg[start:end])
            except (ValueError, RecursionError):
                continue  # a broken part of a malformed message: counted by `malformed`
            if not isinstance(obj, dict):
                continue
        kind, sym = classify_object(obj)
        if kind == ROUTE:
            out.records.append((start, end, pipe_of(sym)))
        elif kind == STATUS:
            out.statuses.append((start, obj))
        else:
            out.no_symbol += 1
    return out

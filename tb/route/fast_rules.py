"""What the fast scanners may place without decoding -- the one rule both fast paths implement.

A message is placed by a fast path when ALL of these hold; otherwise the whole message goes to
the slow path (tb.route.slow) and its objects count as ``fallback``:

1. No backslash, no control byte other than tab, newline, carriage return, and no byte >= 0x80
   (so whatever is routed fast is ASCII, hence valid UTF-8; unicode takes the slow path).
2. At least one ``{``; quotes pair up inside the message, and no ``{``/``}`` lies inside a string.
3. Braces alternate ``{ } { } ...`` (flat objects), and the bytes around them are exactly
   ``ws [ ws OBJ (ws , ws OBJ)* ws ] ws`` (ws = space, tab, newline, carriage return).
4. Key look-up works on byte patterns (without escapes, in valid JSON ``"sym"`` can only be a
   string whose content is sym). Let ``"N"`` be the bytes ``"sym"``, ``"pair"``, ``"ev"``, ``"p"``.
   An occurrence is a KEY when followed by ``ws : ws "``; its value runs to the next quote.
   a. ``"sym"`` and ``"pair"``: at most one occurrence per object, and it must be a key whose
      value's closing quote lies inside the object. No ``"sym"sym"`` / ``"pair"pair"`` overlap.
   b. ``"ev"`` matters only when it is a key whose value is ``status`` or ``C`` ("interesting");
      an object with two ``"ev"`` occurrences, one of them interesting, is refused.
   c. ``"p"`` matters only in a forex quote (interesting ev C) without sym/pair: at most one
      occurrence there; a key -> its value (closing quote inside the object) is the instrument.
5. The routed symbol is at most MAX_FAST_SYMBOL bytes (the numpy path's row width).
6. A status object (``"ev":"status"``) decodes with json.loads.

Placement: ev "status" -> statuses; else the value of ``sym``, else ``pair``, else (ev "C") ``p``
is hashed as raw bytes; no such key -> no_symbol. A key given twice (legal JSON that parsers
read differently) counts by its first value on every path: the span router reads the first
``"sym"`` and the slow path decodes first-wins. Without escapes, raw bytes == the decoded
string's UTF-8, so this agrees with the slow path (tests/route/test_router_props.py pins it).

Not checked (a documented limit, pinned by test_router.py): the grammar between the tokens of a
flat object, e.g. a missing or trailing comma. Such an object is passed on as the feed sent it.
"""

from __future__ import annotations

__all__ = ["MAX_FAST_SYMBOL", "WS", "le"]

MAX_FAST_SYMBOL = 32
WS = b" \t\n\r"


def le(pattern: bytes) -> int:
    """A byte pattern as the little-endian integer the lanes compare words of the batch with."""
    return int.from_bytes(pattern, "little")

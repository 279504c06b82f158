"""The small lane: a batch too small for numpy's fixed cost, routed by one regular expression.

Theory of operation. A trickle's receive holds one to a few messages of 1-5 trades; numpy's fixed
cost per call (~0.5-1 ms) would dwarf them, and each Python step counts (the wake-up's cost is per
bytecode). The messages are joined with "\n" (which no object can contain, so no match crosses
from one message into the next) and one ``findall`` finds every object and its instrument. The
matches never overlap, so they cover the text after its first "[" exactly when their lengths add
up to it: that is how anything else in a message (a status, another key order, a gap, an escape,
unicode, nesting) is caught, and the whole batch is declined (None) for the general way.

What it places, it places as the span lane does (tb.route.spans: the same prefixes, the same
symbol bounds), and so as the reference does (tests/route/test_router_props.py pins both at
random splits). The documented limit, shared with the span lane: the grammar inside an object is
not checked (an unterminated string inside an object is passed on as the feed sent it).

``small_runs`` is a method of tb.route.Router (it reads the router's pipe count, hash and its
one symbol -> pipe cache); its result is bare lists, for PipeWriter.submit_small.
"""

from __future__ import annotations

import re
from operator import itemgetter

from .batch import SYMBOL_CACHE_MAX
from .spans import SYM_ROW

__all__ = ["feed_objects", "small_runs"]

# One object of the small lane and what follows it, as route_spans reads it: a prefix, compact
# or spaced -- a one-byte ev and sym, an ev of 1-7 bytes and pair, or ev "C" and p -- and the
# instrument up to the first quote (1..SYM_ROW-1 bytes; its group says which key); the object up
# to the first "}"; then "," with at most one space, or the message's closing "]" -- followed by
# "\n[" and the next message, or the end. Every byte is printable ASCII without a backslash
# (else the general path decides), so "\n" is in none of the classes.
_CH = rb"[ !#-\[\]-~]"  # a byte of a string without quote or backslash
_SMALL_OBJECT = re.compile(
    rb'((?:\{"ev":(?:"%s","sym":"| "%s", "sym": ")(%s{1,%d})"|'
    rb'\{"ev":(?: "(?!status")%s{1,7}", "pair": "|"(?!status")%s{1,7}","pair":")(%s{1,%d})"|'
    rb'\{"ev":(?:"C","p":"| "C", "p": ")(%s{1,%d})"'
    rb")[ -\[\]-|~]*\})(, ?|\]\n\[|\]\Z)"
    % (_CH, _CH, _CH, SYM_ROW - 1, _CH, _CH, _CH, SYM_ROW - 1, _CH, SYM_ROW - 1)
)
# _SMALL_OBJECT's first alternative, compact, alone: the real stocks feed's objects (its groups
# the same, pair and p always empty)
_COMPACT_SYM_OBJECT = re.compile(
    rb'(\{"ev":"%s","sym":"(%s{1,%d})"()()[ -\[\]-|~]*\})(,|\]\n\[|\]\Z)' % (_CH, _CH, SYM_ROW - 1)
)
_SMALL_PATTERNS = (_COMPACT_SYM_OBJECT, _SMALL_OBJECT)  # (tried in this order)
_LEN4 = [k.to_bytes(4, "little") for k in range(4096)]  # record headers, made once
_OBJ, _SEP = itemgetter(0), itemgetter(4)  # of a _SMALL_OBJECT match: the object, what follows


def small_runs(router, payloads: list) -> tuple[list, list[int], list[int], int] | None:
    """Route a small batch of payloads (bytes-like, each a whole message) by `router`'s pipes,
    hash and cache: (runs, counts, used, trades) -- runs[i] pipe i's records as bytes or a
    bytearray (None: none), counts[i] their number, `used` the pipes with a run in order of
    first use -- or None, having done nothing, when the batch is not feed-shaped."""
    npipes = router.npipes
    # (one message, the usual receive of a quiet feed, is scanned where it lies)
    text = payloads[0] if len(payloads) == 1 else b"\n".join(payloads)
    if not text or text[0] != 91 or text[-1] != 93:  # "[...]"
        return None
    # The real feed's stocks objects first, by the shorter pattern (cheaper with cold caches, as
    # a trickle's are); whatever it does not cover, by the whole one. (Where the short one covers
    # the text, the whole one finds the same matches: its first alternative is the same.)
    for pattern in _SMALL_PATTERNS:
        found = pattern.findall(text, 1)
        # (the objects' and separators' lengths added up in C: no step per trade)
        if 1 + sum(map(len, map(_OBJ, found))) + sum(map(len, map(_SEP, found))) == len(text):
            break
    else:
        # empty messages ("[]") hold no object to cover them: without them, once more
        rest = [p for p in payloads if len(p) != 2 or p != b"[]"]
        if len(rest) == len(payloads):
            return None
        return small_runs(router, rest) if rest else ([None] * npipes, [0] * npipes, [], 0)
    cache, pick = router.pipe_cache, router.pick
    runs: list = [None] * npipes
    counts = [0] * npipes
    used: list[int] = []
    len4 = _LEN4
    for obj, sym, pair, fx, _ in found:
        if not sym:
            # named by pair or p: unless the object has a sym key (or, for p, a pair key)
            # further on (the placement rule, tb.route.fast_rules); none can be escaped here
            if pair:
                sym = pair
                if b"y" in obj:
                    return None
            else:
                sym = fx
                if b"y" in obj or b"r" in obj:
                    return None
        try:
            pipe = cache[sym]
        except KeyError:
            if len(cache) >= SYMBOL_CACHE_MAX:
                cache.clear()
            pipe = cache[sym] = pick(sym, npipes)
        try:
            record = len4[len(obj)] + obj
        except IndexError:  # (an object of 4 KiB or more)
            record = len(obj).to_bytes(4, "little") + obj
        run = runs[pipe]
        if run is None:  # (a pipe's first record is its run: one concatenation, no bytearray)
            runs[pipe] = record
            counts[pipe] = 1
            used.append(pipe)
        else:
            if type(run) is bytes:  # a second record: from now on extended in place
                run = runs[pipe] = bytearray(run)
            run += record
            counts[pipe] += 1
    return runs, counts, used, len(found)


def feed_objects(text: bytes) -> list | None:
    """The objects of feed-shaped messages ("[...]" each, joined by "\n"), as small_runs finds
    them: (object, instrument) pairs, or None when the text is not all feed-shaped (then the
    general way decides). For tools that weigh a capture by symbol (tb plan)."""
    if not text or text[0] != 91 or text[-1] != 93:
        return None
    found = _SMALL_OBJECT.findall(text, 1)
    if 1 + sum(map(len, map(_OBJ, found))) + sum(map(len, map(_SEP, found))) != len(text):
        return None
    out = []
    for obj, sym, pair, fx, _ in found:
        if not sym:  # (the placement rule, as in small_runs)
            if pair:
                sym = pair
                if b"y" in obj:
                    return None
            else:
                sym = fx
                if b"y" in obj or b"r" in obj:
                    return None
        out.append((obj, sym))
    return out

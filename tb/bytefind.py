"""Every position of one byte value in a large uint8 array: np.flatnonzero(seg == byte), faster.

numpy's compare is one fast pass, but its nonzero walks every input byte again and is the slow
step (most of the router's "}" pass; docs/performance.md has the figures). Packing the compare's mask into bits and searching the
64-bit words instead reads an eighth as many elements; the bit index inside each word that holds
a hit comes from a few vector steps over those words alone. A word holds the hits of 64 bytes:
the object ends and frame headers searched for are rarely two to a word (a feed's objects are
longer than 64 bytes), and a mask with three in any word falls back to np.flatnonzero.
"""

from __future__ import annotations

import numpy as np

__all__ = ["find_all", "ones"]

SMALL = 16384  # below this many bytes np.flatnonzero alone is as fast
_ONE = np.uint64(1)


def find_all(seg: np.ndarray, byte: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Sorted int64 positions i where seg[i] == byte.

    `mask`: a bool scratch array, used if it holds at least len(seg) + 63 elements."""
    n = len(seg)
    if n < SMALL:
        out = mask[:n] if mask is not None and len(mask) >= n else None
        return np.flatnonzero(np.equal(seg, byte, out=out))
    padded = (n + 63) & ~63
    m = mask[:padded] if mask is not None and len(mask) >= padded else np.empty(padded, bool)
    np.equal(seg, byte, out=m[:n])
    m[n:] = False
    return ones(m)


def ones(mask: np.ndarray) -> np.ndarray:
    """np.flatnonzero(mask) for a bool array whose length is a multiple of 64."""
    words = np.packbits(mask, bitorder="little").view("<u8")  # bit b of word w: mask[64w + b]
    at = np.flatnonzero(words)
    w = words[at]
    pos = (at << 6) + _lowest_bit(w)
    rest = w & (w - _ONE)  # each word without its lowest hit
    more = np.flatnonzero(rest)
    if len(more):
        r = rest[more]
        if (r & (r - _ONE)).any():  # three or more hits in 64 bytes: a dense mask
            return np.flatnonzero(mask)
        pos = np.insert(pos, more + 1, (at[more] << 6) + _lowest_bit(r))
    return pos


def _lowest_bit(w: np.ndarray) -> np.ndarray:
    """Index of the lowest set bit of each (nonzero) uint64."""
    return np.bitwise_count((w & (~w + _ONE)) - _ONE)

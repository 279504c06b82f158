"""Symbol -> pipe hashing, scalar and vectorized.

- ``compat``: ``((fnv1a64(sym) >> 32) & 0xffffffff) % npipes`` -- the C original's mapping, bit for
  bit. FNV-1a-64: offset 0xcbf29ce484222325, prime 0x100000001b3, xor then multiply, per byte.
  Its high bits barely move for short keys (the prime is 2^40 + 0x1b3), so 1-2 letter tickers
  pile up on one pipe.
- ``mixed`` (default): the symbol as little-endian 8-byte words (the last one zero padded), each
  multiplied by its own odd constant, xor-ed together, then murmur3's fmix64 finalizer, then
  ``% npipes``. Every bit of the symbol reaches every bit of the result, and it takes a few
  operations per word where FNV takes two per byte: a batch's symbols are mostly one word.
  A zero word adds nothing, so zero padding to any number of words gives the same hash.

The numpy versions hash many symbols at once from zero-padded fixed-width rows (or, for mixed,
the words themselves). For FNV a zero padding byte only multiplies the running hash by the
prime (xor with 0 is a no-op), so the padded hash equals ``fnv1a64(sym) * PRIME**pad`` mod 2^64
and is corrected by multiplying with ``PRIME_INV**pad`` (the prime is odd, hence invertible
mod 2^64). tests/route/test_hashing.py pins scalar == vector.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "FNV_OFFSET",
    "FNV_PRIME",
    "FNV_PRIME_INV",
    "HASHES",
    "VECTOR_HASHES",
    "fmix64",
    "fnv1a64",
    "fnv1a64_rows",
    "mix64",
    "mix64_words",
    "mod_pipes",
    "pipe_compat",
    "pipe_mixed",
    "pipes_compat",
    "pipes_mixed",
    "pipes_mixed_words",
]

MASK64 = 0xFFFFFFFFFFFFFFFF
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
FNV_PRIME_INV = pow(FNV_PRIME, -1, 1 << 64)


def fnv1a64(data: bytes) -> int:
    """FNV-1a-64 of ``data``."""
    h = FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & MASK64
    return h


def fmix64(k: int) -> int:
    """murmur3's 64-bit finalizer: every input bit affects every output bit."""
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & MASK64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & MASK64
    k ^= k >> 33
    return k


def _word_constant(k: int) -> int:
    """The odd multiplier of a symbol's k-th word (a different one for every position)."""
    return fmix64(0x9E3779B97F4A7C15 * (k + 1) & MASK64) | 1


WORD_CONSTANTS = [_word_constant(k) for k in range(64)]  # symbols up to 512 bytes; more: computed


def mix64(sym: bytes) -> int:
    """The mixed hash: fmix64 of the xor of each little-endian 8-byte word times its constant."""
    h = 0
    for k in range(0, len(sym), 8):
        c = WORD_CONSTANTS[k >> 3] if k < 512 else _word_constant(k >> 3)
        h ^= (int.from_bytes(sym[k : k + 8], "little") * c) & MASK64
    return fmix64(h)


def pipe_compat(sym: bytes, npipes: int) -> int:
    """The C original's pipe for ``sym``: high 32 bits of FNV-1a-64, mod ``npipes``."""
    return ((fnv1a64(sym) >> 32) & 0xFFFFFFFF) % npipes


_C0 = WORD_CONSTANTS[0]


def pipe_mixed(sym: bytes, npipes: int) -> int:
    """A well-mixed pipe for ``sym``: mix64(sym) mod ``npipes``."""
    if len(sym) > 8:
        return mix64(sym) % npipes
    # one word (most tickers): mix64 without its loop, for the small lane's cache misses
    return fmix64((int.from_bytes(sym, "little") * _C0) & MASK64) % npipes


HASHES: dict[str, Callable[[bytes, int], int]] = {"mixed": pipe_mixed, "compat": pipe_compat}

_U64 = np.uint64
_PRIME = _U64(FNV_PRIME)
# _INV_POW[k] = PRIME_INV**k mod 2^64: undoes k zero padding bytes (test_hashing pins it).
_INV_POW = np.array([pow(FNV_PRIME_INV, k, 1 << 64) for k in range(257)], dtype=np.uint64)


def fnv1a64_rows(rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """FNV-1a-64 of each row's first ``lengths[i]`` bytes.

    ``rows`` is a (n, width) uint8 array whose bytes at and beyond each row's length are ZERO;
    ``lengths`` holds integers in 0..width (width <= 256). Returns a uint64 array of n hashes.
    """
    n, width = rows.shape
    if width > 256:
        raise ValueError("row width above 256")
    h = np.full(n, FNV_OFFSET, dtype=np.uint64)
    for col in range(width):
        # uint64 multiply wraps mod 2^64, exactly like the C original's arithmetic.
        h ^= rows[:, col]
        h *= _PRIME
    # Undo the padding: each zero byte only multiplied by the prime (see module docstring).
    h *= _INV_POW[width - lengths]
    return h


def _fmix64_vec(k: np.ndarray) -> np.ndarray:
    k = k ^ (k >> _U64(33))
    k *= _U64(0xFF51AFD7ED558CCD)
    k ^= k >> _U64(33)
    k *= _U64(0xC4CEB9FE1A85EC53)
    k ^= k >> _U64(33)
    return k


def mod_pipes(k: np.ndarray, npipes: int) -> np.ndarray:
    """k % npipes in place, as int64 (a power of two is a mask: uint64 division is slow)."""
    if npipes & (npipes - 1) == 0:
        k &= _U64(npipes - 1)
    else:
        k %= _U64(npipes)
    return k.view(np.int64)  # every value is below npipes: the same numbers


def pipes_compat(rows: np.ndarray, lengths: np.ndarray, npipes: int) -> np.ndarray:
    """Vector ``pipe_compat`` of zero-padded symbol rows (as fnv1a64_rows) -> int64 pipes."""
    return mod_pipes(fnv1a64_rows(rows, lengths) >> _U64(32), npipes)


_WORD_CONSTANTS = np.array(WORD_CONSTANTS, dtype=np.uint64)


def mix64_words(words: np.ndarray) -> np.ndarray:
    """Vector ``mix64`` of symbols as zero-padded little-endian uint64 words: shape (n,) for
    symbols of at most 8 bytes, (n, k) for longer ones -> a new uint64 array of n hashes."""
    if words.ndim == 1:
        h = words * _WORD_CONSTANTS[0]
    else:
        h = words[:, 0] * _WORD_CONSTANTS[0]
        for k in range(1, words.shape[1]):
            h ^= words[:, k] * _WORD_CONSTANTS[k]
    return _fmix64_vec(h)


def pipes_mixed_words(words: np.ndarray, npipes: int) -> np.ndarray:
    """Vector ``pipe_mixed`` of symbols as zero-padded little-endian uint64 words (as
    mix64_words) -> int64 pipe numbers."""
    return mod_pipes(mix64_words(words), npipes)


def pipes_mixed(rows: np.ndarray, lengths: np.ndarray, npipes: int) -> np.ndarray:
    """Vector ``pipe_mixed`` of zero-padded symbol rows (as fnv1a64_rows) -> int64 pipes."""
    n, width = rows.shape
    if width > 8 * len(_WORD_CONSTANTS):
        raise ValueError(f"row width above {8 * len(_WORD_CONSTANTS)}")
    padded = np.zeros((n, max(8, (width + 7) & ~7)), dtype=np.uint8)
    padded[:, :width] = rows
    return pipes_mixed_words(padded.view("<u8"), npipes)


# (rows, lengths, npipes) -> int64 pipe numbers; rows zero padded past each symbol's length
VECTOR_HASHES: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "mixed": pipes_mixed,
    "compat": pipes_compat,
}

"""Hash vectors, the compat mapping, and scalar == vectorized."""

from __future__ import annotations

import string

import numpy as np
import pytest

from tb.route.hashing import (
    FNV_PRIME,
    FNV_PRIME_INV,
    HASHES,
    VECTOR_HASHES,
    fmix64,
    fnv1a64,
    fnv1a64_rows,
    mix64,
    pipe_compat,
    pipe_mixed,
    pipes_mixed_words,
)


def reference_fnv1a64(data: bytes) -> int:
    """The textbook definition, written independently: xor the byte, multiply, keep 64 bits."""
    h = 14695981039346656037  # 0xcbf29ce484222325
    for b in data:
        h ^= b
        h *= 1099511628211  # 0x100000001b3
        h %= 2**64
    return h


VECTORS = {
    b"": 0xCBF29CE484222325,
    b"a": 0xAF63DC4C8601EC8C,  # published FNV-1a-64 test vector
    b"foobar": 0x85944171F73967E8,  # published FNV-1a-64 test vector
    b"AAPL": 0x89106B8B9F086CCB,
    b"MSFT": 0xE4BF0DAF276EFD73,
    b"BTC-USD": 0x6F09EE5EBCB567B1,
}


@pytest.mark.parametrize("data,expected", VECTORS.items())
def test_fnv1a64_vectors(data, expected):
    assert reference_fnv1a64(data) == expected
    assert fnv1a64(data) == expected


def test_fnv1a64_matches_reference_on_many_inputs():
    rng = np.random.default_rng(7)
    for n in range(0, 70):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert fnv1a64(data) == reference_fnv1a64(data)


def test_prime_inverse():
    assert (FNV_PRIME * FNV_PRIME_INV) % 2**64 == 1


def test_compat_is_the_c_mapping():
    # (uint32)(fnv >> 32) % N, as lb.c computes it.
    for sym in [b"AAPL", b"MSFT", b"A", b"ZZZZZ", b"BTC-USD", b""]:
        for n in (1, 3, 4, 7, 32, 1000):
            assert pipe_compat(sym, n) == ((reference_fnv1a64(sym) >> 32) & 0xFFFFFFFF) % n
    assert pipe_compat(b"AAPL", 32) == 11
    assert pipe_compat(b"MSFT", 32) == 15
    assert pipe_compat(b"a", 32) == 12


def reference_fmix64(k: int) -> int:
    """murmur3's fmix64 as published, written independently."""
    for shift, mult in ((33, 0xFF51AFD7ED558CCD), (33, 0xC4CEB9FE1A85EC53)):
        k = ((k ^ (k >> shift)) * mult) % 2**64
    return k ^ (k >> 33)


def reference_mix64(sym: bytes) -> int:
    """The mixed hash by its definition: words of 8 bytes (zero padded), word k times the odd
    constant fmix64(golden * (k + 1)) | 1, xor-ed, then fmix64."""
    h = 0
    for k in range(0, len(sym), 8):
        word = int.from_bytes(sym[k : k + 8].ljust(8, b"\0"), "little")
        h ^= (word * (reference_fmix64(0x9E3779B97F4A7C15 * (k // 8 + 1) % 2**64) | 1)) % 2**64
    return reference_fmix64(h)


MIXED = {  # pinned: a change here moves symbols between pipes for every user
    b"": 0,
    b"A": 0x99987133CD9E8D6B,
    b"AAPL": 0x5234CCDC34E10967,
    b"BRK.A": 0x68ED64B0B009AB4C,
    b"O:SPY251219C00650000": 0xFF6E1C6686EEFB16,
    b"X:BTC-USD": 0x8D900EF5F21D7553,
}


def test_mixed_vectors():
    assert fmix64(0) == 0
    assert fmix64(0xAF63DC4C8601EC8C) == reference_fmix64(0xAF63DC4C8601EC8C) == 0x82A2A958A9BECE5B
    for sym, expected in MIXED.items():
        assert reference_mix64(sym) == expected
        assert mix64(sym) == expected
        for n in (1, 3, 32, 1000):
            assert pipe_mixed(sym, n) == expected % n
    assert pipe_mixed(b"AAPL", 32) == 7


def test_mixed_matches_reference_on_many_inputs():
    rng = np.random.default_rng(11)
    for n in list(range(0, 70)) + [511, 512, 513, 700]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert mix64(data) == reference_mix64(data)


def test_hashes_table():
    assert HASHES == {"mixed": pipe_mixed, "compat": pipe_compat}


def test_short_tickers_spread_with_mixed_not_compat():
    one = [c.encode() for c in string.ascii_uppercase]
    two = [(a + b).encode() for a in string.ascii_uppercase for b in string.ascii_uppercase]
    assert len({pipe_compat(s, 32) for s in one}) == 1  # the C original's skew
    assert len({pipe_mixed(s, 32) for s in one}) >= 14
    assert len({pipe_compat(s, 32) for s in two}) <= 2
    assert len({pipe_mixed(s, 32) for s in two}) == 32
    busiest = max(np.bincount([pipe_mixed(s, 32) for s in two], minlength=32))
    assert busiest < 3 * len(two) / 32


def rows_of(syms: list[bytes], width: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.zeros((len(syms), width), dtype=np.uint8)
    for i, s in enumerate(syms):
        rows[i, : len(s)] = np.frombuffer(s, np.uint8)
    return rows, np.array([len(s) for s in syms], dtype=np.int64)


@pytest.mark.parametrize("width", [1, 5, 8, 9, 16, 32, 200])
def test_vector_hashes_match_scalar(width):
    rng = np.random.default_rng(width)
    syms = [b""] + [
        rng.integers(0, 256, rng.integers(0, width + 1), dtype=np.uint8).tobytes()
        for _ in range(300)
    ]
    rows, lengths = rows_of(syms, width)
    assert fnv1a64_rows(rows, lengths).tolist() == [fnv1a64(s) for s in syms]
    for name, vec in VECTOR_HASHES.items():
        for n in (1, 4, 32, 1000):
            assert vec(rows, lengths, n).tolist() == [HASHES[name](s, n) for s in syms]


def test_mixed_words_match_scalar():
    # what the span router hands over: one word per symbol, or k words, zero padded
    rng = np.random.default_rng(3)
    for width, shape in ((8, (300,)), (24, (300, 3))):
        syms = [rng.integers(1, 256, rng.integers(1, width + 1), dtype=np.uint8).tobytes()
                for _ in range(300)]  # fmt: skip
        rows, _ = rows_of(syms, width)
        words = rows.view("<u8").reshape(shape)
        for n in (4, 32, 1000):
            assert pipes_mixed_words(words, n).tolist() == [pipe_mixed(s, n) for s in syms]

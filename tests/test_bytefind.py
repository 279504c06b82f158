"""tb.bytefind: the same positions as np.flatnonzero(seg == byte), for every density and length."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tb.bytefind import SMALL, find_all, ones


def expected(seg: np.ndarray, byte: int) -> np.ndarray:
    return np.flatnonzero(seg == byte)


@pytest.mark.parametrize("n", [0, 1, 63, 64, SMALL - 1, SMALL, SMALL + 1, SMALL + 63, 1 << 20])
@pytest.mark.parametrize("density", [0.0, 1e-4, 0.008, 1 / 32, 0.05, 0.3, 1.0])
def test_agrees_with_flatnonzero(n, density):
    rng = np.random.default_rng(n + int(density * 1000))
    seg = rng.integers(0, 256, n, dtype=np.uint8)
    seg[rng.random(n) < density] = 0x7D
    want = expected(seg, 0x7D)
    got = find_all(seg, 0x7D)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    # with a scratch mask, too small or large enough, and stale content in it
    for size in (n, n + 63, 2 * n + 100):
        mask = np.ones(size, dtype=bool)
        assert np.array_equal(find_all(seg, 0x7D, mask), want)


def test_hits_at_word_edges_and_two_to_a_word():
    n = 1 << 16
    seg = np.zeros(n, dtype=np.uint8)
    hits = [0, 63, 64, 127, 128, 129, 1000, 1063, 4096 + 5, 4096 + 60, n - 64, n - 1]
    seg[hits] = 0x81
    assert find_all(seg, 0x81).tolist() == hits


def test_three_in_a_word_falls_back_exactly():
    n = 1 << 16
    seg = np.zeros(n, dtype=np.uint8)
    hits = [10, 200, 201, 202, 300, 5000, 5001, 5063]
    seg[hits] = 0x7D
    assert find_all(seg, 0x7D).tolist() == hits


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 64 * 400 - 1), max_size=300))
def test_ones_is_flatnonzero(positions):
    mask = np.zeros(64 * 400, dtype=bool)
    mask[positions] = True
    assert np.array_equal(ones(mask), np.flatnonzero(mask))

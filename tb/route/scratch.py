"""The router's reused buffers: one Scratch per Router, shared by every lane.

Fresh multi-megabyte arrays cost page faults on every batch, more than the work done on them
(docs/performance.md, the Router's section), so each buffer here grows to the largest batch seen
and is handed out again, batch after batch. Nothing carries over from one use to the next:
every user overwrites what it takes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["Scratch"]


class Scratch:
    """Buffers kept from batch to batch.

    `outputs`, if given, supplies the span lane's output buffers (n -> a uint8 array of n bytes,
    or None for this one): the pipe writer's, whose runs it splices into the pipes instead of
    copying them."""

    def __init__(self, outputs: Callable[[int], np.ndarray | None] | None = None) -> None:
        self._bools = [np.empty(0, dtype=bool), np.empty(0, dtype=bool)]
        self._out = np.empty(0, dtype=np.uint8)
        self._packed = np.zeros(0, dtype=np.uint8)
        self.outputs = outputs

    def bools(self, n: int, which: int = 0) -> np.ndarray:
        """A bool array of n elements: the kept array number `which` (0 or 1; a caller that
        needs two at once takes both)."""
        kept = self._bools[which]
        if len(kept) < n:
            kept = self._bools[which] = np.empty(max(n, 2 * len(kept)), dtype=bool)
        return kept[:n]

    def output(self, n: int) -> np.ndarray:
        """n bytes to build a batch's runs in. The runs handed out are views of it: PipeWriter
        copies what it cannot write at once, so the buffer is free again for the next batch."""
        if self.outputs is not None:
            out = self.outputs(n)
            if out is not None:
                return out
        if len(self._out) < n:
            self._out = np.empty(max(n, 2 * len(self._out)), dtype=np.uint8)
        return self._out[:n]

    def packed(self, payloads: list, size: int, pad: int) -> np.ndarray:
        """The payloads (`size` bytes in all) one after the other, then at least `pad` bytes."""
        if len(self._packed) < size + pad:
            self._packed = np.zeros(max(size + pad, 2 * len(self._packed)), np.uint8)
        view = memoryview(self._packed)
        at = 0
        for m in payloads:
            view[at : at + len(m)] = m
            at += len(m)
        return self._packed

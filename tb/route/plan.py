"""Planned pipes: a symbol -> pipe assignment made in advance, the hash for every other symbol.

Theory of operation. A `Plan` maps the symbols it knows to pipes (made by `tb plan` from a day's
load); a symbol it does not know goes by the plan's hash, so a new listing still has a stable
home. The mapping is fixed for the life of a run: per-symbol order and stickiness hold as with
the hash alone. The file is small versioned JSON (PLAN_FORMAT, PLAN_VERSION): the pipe count, the
hash for unplanned symbols, the symbol -> pipe table, what the load was weighed by and the
busiest pipe's expected share of it.

Every lane of the Router asks the same question:

- the scalar lanes (the reference, the slow fallback, the small lane on a cache miss) call
  ``Plan.pick``: a dict lookup, then the hash;
- the numpy lanes hand a batch's symbols as zero-padded little-endian words to
  ``PlanTable.pipes``: each symbol's 64-bit mixed hash (tb.route.hashing.mix64, whatever the hash
  for unplanned symbols is) is looked up in a power-of-two open-addressing table (linear
  probing, a quarter full), slot = the hash's top bits. One gather of keys and one of pipes
  place nearly every symbol; only the few whose home slot holds another key probe on, at most
  as far as the farthest-displaced key was placed.

Why the 64-bit key is exact: for a symbol of at most 8 bytes the mixed hash is a bijection of
its one word (an odd multiplier, then fmix64, both invertible mod 2^64), and distinct symbols
without NUL bytes have distinct words. Only a symbol of more than 8 bytes (on either side) could
share a key with another one, so a slot holding such a symbol, or a query for one, also compares
the words themselves before it counts as found. tests/route/test_plan.py pins the table
against the dict, tests/route/test_router_props.py every lane against the reference.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .batch import RouteError
from .fast_rules import MAX_FAST_SYMBOL
from .hashing import HASHES, VECTOR_HASHES, mix64, mix64_words, mod_pipes

__all__ = ["PLAN_FORMAT", "PLAN_VERSION", "Plan", "PlanError", "PlanTable", "load_plan"]

PLAN_FORMAT = "tb-plan"
PLAN_VERSION = 1
WEIGHTS = ("trades", "bytes")
_WORDS = (MAX_FAST_SYMBOL + 7) // 8  # the longest symbol the numpy lanes route, in words
_U64 = np.uint64


class PlanError(RouteError):
    """A plan that cannot be used: unreadable, malformed, another version, or for another run."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Planned pipes for `symbols` (bytes -> pipe), the `hash` for every other symbol.

    `by` is what the load was weighed by ("trades" or "bytes"); `expected_share` the busiest
    pipe's share (0..1) of the load the plan was made from.
    Raises:
        PlanError: on a value out of range.
    """

    pipes: int
    hash: str
    symbols: dict[bytes, int]
    by: str = "trades"
    expected_share: float = 0.0
    table: PlanTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.pipes, int) or isinstance(self.pipes, bool) or self.pipes < 1:
            raise PlanError(f"pipes must be a positive integer, got {self.pipes!r}")
        if not isinstance(self.hash, str) or self.hash not in HASHES:
            raise PlanError(f"unknown hash {self.hash!r}; choose one of {', '.join(HASHES)}")
        if not isinstance(self.by, str) or self.by not in WEIGHTS:
            raise PlanError(f"unknown weight {self.by!r}; choose one of {', '.join(WEIGHTS)}")
        share = self.expected_share
        if not (isinstance(share, int | float) and math.isfinite(share) and 0 <= share <= 1):
            raise PlanError(f"expected_share must be a number from 0 to 1, got {share!r}")
        for sym, pipe in self.symbols.items():
            if not isinstance(sym, bytes) or not sym:
                raise PlanError(f"a symbol must be non-empty bytes, got {sym!r}")
            if not isinstance(pipe, int) or isinstance(pipe, bool) or not 0 <= pipe < self.pipes:
                raise PlanError(f"symbol {_show(sym)}: pipe {pipe!r} is not 0 to {self.pipes - 1}")
        object.__setattr__(self, "table", PlanTable(self))

    def pick(self, sym: bytes, npipes: int) -> int:
        """The pipe of `sym`: its planned one, else by the hash (npipes: the plan's)."""
        pipe = self.symbols.get(sym)
        return HASHES[self.hash](sym, npipes) if pipe is None else pipe

    @property
    def expected_ratio(self) -> float:
        """The busiest pipe's expected load over the fair share."""
        return self.expected_share * self.pipes

    def to_json(self) -> str:
        """The plan file's text (the symbols in the plan's order: tb plan puts the heaviest
        first, which the table places first, each in its home slot if free)."""
        table = self.symbols.items()
        doc = {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "pipes": self.pipes,
            "hash": self.hash,
            "by": self.by,
            "expected_share": self.expected_share,
            "symbols": {s.decode("utf-8", "surrogatepass"): p for s, p in table},
        }
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, name: str = "plan") -> Plan:
        """Read a plan file's text. Raises PlanError naming `name` and what is wrong."""
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PlanError(f"{name} is not a plan file: not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
            raise PlanError(f'{name} is not a plan file (no "format": "{PLAN_FORMAT}")')
        if doc.get("version") != PLAN_VERSION:
            raise PlanError(
                f"{name} is a plan of version {doc.get('version')!r}; this tb reads version"
                f" {PLAN_VERSION} (make it again with tb plan)"
            )
        symbols = doc.get("symbols")
        if not isinstance(symbols, dict):
            raise PlanError(f'{name}: "symbols" must be an object of symbol: pipe')
        try:
            return cls(
                pipes=doc.get("pipes"),
                hash=doc.get("hash"),
                symbols={s.encode("utf-8", "surrogatepass"): p for s, p in symbols.items()},
                by=doc.get("by", "trades"),
                expected_share=doc.get("expected_share", 0.0),
            )
        except PlanError as exc:
            raise PlanError(f"{name}: {exc}") from None


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """The plan in file `path`. Raises PlanError (unreadable, malformed, another version)."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise PlanError(f"cannot read plan {path}: {exc.strerror or exc}") from None
    return Plan.from_json(text, str(path))


def _show(sym: bytes) -> str:
    return repr(sym.decode("utf-8", "replace"))


class PlanTable:
    """The plan's symbols as an open-addressing table over their 64-bit mixed hashes, for the
    numpy lanes (see the module docstring)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        placed = {s: p for s, p in plan.symbols.items() if len(s) <= MAX_FAST_SYMBOL}
        size = 16
        while size < 4 * len(placed):
            size *= 2
        self._mask = size - 1
        self._shift = _U64(64 - size.bit_length() + 1)
        # slot i: its key at [2i], its pipe at [2i + 1] (-1: empty), one cache line for both
        self._slots = np.zeros(2 * size, dtype=np.uint64)
        self._pairs = self._slots.view(np.int64)
        self._keys, self._pipes = self._slots[0::2], self._pairs[1::2]
        self._pipes[:] = -1
        self._long = np.zeros(size, dtype=bool)  # a slot holding a symbol of more than 8 bytes
        self._words = np.zeros((size, _WORDS), dtype=np.uint64)  # its symbol, zero padded
        self.max_probe = 0  # how far the farthest key lies from its home slot
        for sym, pipe in placed.items():
            key = mix64(sym)
            at, d = key >> (64 - size.bit_length() + 1), 0
            while self._pipes[at] >= 0:
                at, d = (at + 1) & self._mask, d + 1
            self._keys[at], self._pipes[at], self._long[at] = key, pipe, len(sym) > 8
            self._words[at] = np.frombuffer(sym.ljust(8 * _WORDS, b"\0"), dtype="<u8")
            self.max_probe = max(self.max_probe, d)
        self._any_long = bool(self._long.any())

    def _probe(self, pipes, hit, slot, keys, words, qlong) -> None:
        """Past the home slot, for the symbols not found there whose home slot holds another
        key: on up to max_probe slots, until found or an empty slot (pipes updated in place)."""
        pending = np.flatnonzero(~hit)
        pending = pending[self._pipes[slot[pending]] >= 0]
        for d in range(1, self.max_probe + 1):
            if not len(pending):
                break
            at = (slot[pending] + d) & self._mask
            got = self._pipes[at]
            found = (self._keys[at] == keys[pending]) & (got >= 0)
            if self._any_long or qlong is not None:
                found = self._verify(found, at, words, qlong, pending)
            pipes[pending[found]] = got[found]
            pending = pending[~found & (got >= 0)]

    def _verify(self, hit, slot, words, qlong, index) -> np.ndarray:
        """`hit`, less the key matches where a symbol of more than 8 bytes (in the slot or
        asked for) differs from the slot's in its words."""
        check = hit & self._long[slot]
        if qlong is not None:
            check |= hit & (qlong if index is None else qlong[index])
        which = np.flatnonzero(check)
        if not len(which):
            return hit
        rows = np.flatnonzero(check) if index is None else index[which]
        asked = words[rows].reshape(len(rows), -1)
        stored = self._words[slot[which]]
        k = asked.shape[1]
        same = (stored[:, :k] == asked).all(axis=1) & (stored[:, k:] == 0).all(axis=1)
        hit = hit.copy()
        hit[which] = same
        return hit

    def pipes_of_words(
        self, words: np.ndarray, lengths: np.ndarray, npipes: int, width: int
    ) -> np.ndarray:
        """Each symbol's pipe (int64): planned, else by the plan's hash. `words`: the symbols
        as zero-padded little-endian uint64 words ((n,) when each has at most 8 bytes, else
        (n, k), k <= 4); `lengths` their lengths, `width` the longest."""
        keys = mix64_words(words)
        if self.plan.hash == "mixed":
            hashed = mod_pipes(keys.copy(), npipes)
        else:
            rows = (words[:, None] if words.ndim == 1 else words).view(np.uint8)[:, :width]
            hashed = VECTOR_HASHES[self.plan.hash](rows, lengths, npipes)
        # the home slot: the key's top bits (below 2^63: the same number as int64)
        slot = (keys >> self._shift).view(np.int64)
        at = slot << 1
        hit = self._slots.take(at) == keys
        qlong = None
        if words.ndim == 2 and words.shape[1] > 1:
            qlong = (words[:, 1:] != 0).any(axis=1)
        if self._any_long or qlong is not None:
            hit = self._verify(hit, slot, words, qlong, None)
        at += 1
        got = self._pairs.take(at)
        hit &= got >= 0  # (an empty slot's key is 0, which is the empty symbol's)
        pipes = np.where(hit, got, hashed)  # (int64 both: no casting)
        if self.max_probe and not hit.all():
            self._probe(pipes, hit, slot, keys, words, qlong)
        return pipes

    def vector_pipes(self, rows: np.ndarray, lengths: np.ndarray, npipes: int) -> np.ndarray:
        """As tb.route.hashing.VECTOR_HASHES, for the plan: zero-padded symbol rows (n, width)
        -> int64 pipes."""
        n, width = rows.shape
        padded = np.zeros((n, max(8, (width + 7) & ~7)), dtype=np.uint8)
        padded[:, :width] = rows
        words = padded.view("<u8")
        return self.pipes_of_words(words[:, 0] if words.shape[1] == 1 else words, lengths,
                                   npipes, width)  # fmt: skip

"""tb.route: the sans-I/O batch router.

Theory of operation. A batch is a sequence of websocket payloads, each a JSON array of event
objects. For each of N pipes the router builds ONE contiguous run of records
``[u32 LE length][the feed's own bytes of one object]``; all events of a symbol land on one pipe,
in feed order (message by message, object by object). Statuses (``"ev":"status"``) are decoded
and returned, never routed.

One Router owns everything that lives from batch to batch: the pipe count and hash, the one
symbol -> pipe cache (symbols repeat; hashing in Python is slow), and the one Scratch of reused
buffers. Its lanes all give the same records in the same order:

- the reference, ``route`` (tb.route.python_path over tb.route.fast_rules, per object with
  bytes.find, and tb.route.slow -- json.loads -- for whatever those rules refuse, counted in
  ``fallback``). It takes anything: bad data is counted, never raised.
- the general numpy lane (numpy_path): the reference's rules vectorized over a whole batch, for
  large batches that the feed-shaped lanes decline (``route`` takes it from numpy_min_bytes).
- the feed-shaped lanes, for messages laid out as the feed lays them out (``{"ev":..,"sym":..``
  compact or spaced, flat objects, ASCII); they decline (None) anything else, which the caller
  then hands to ``route``: the span lane (spans: numpy over the receive arena itself, no copy;
  ``route_frames`` also finds the frames in the same pass) from numpy_min_bytes of payload, and
  the small lane (small: one regular expression) below it.

``route_arena`` is the entry for messages lying in an arena: it picks the feed-shaped lane by
size. tests/route/test_router_props.py pins every lane against the reference byte for byte, at
random splits of the batch; tools/bench_route.py measures them side by side
(docs/performance.md has the figures that keep each lane). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .batch import SYMBOL_CACHE_MAX, RouteBatch, RouteError, RouteTotals
from .hashing import HASHES, VECTOR_HASHES
from .numpy_path import route_numpy
from .plan import Plan, PlanError, load_plan
from .python_path import route_python
from .scratch import Scratch
from .small import small_runs
from .spans import SPAN_PAD, route_frames, route_spans

__all__ = [
    "DEFAULT_NUMPY_MIN_BYTES",
    "SPAN_PAD",
    "Plan",
    "PlanError",
    "RouteBatch",
    "RouteError",
    "RouteTotals",
    "Router",
    "Scratch",
    "load_plan",
    "pipe_for",
]

# numpy costs ~0.5-1 ms per batch however small; below this much payload per batch the Python
# lanes win (measured with tools/bench_route.py; the figures are in docs/performance.md).
DEFAULT_NUMPY_MIN_BYTES = 32 * 1024


class Router:
    """Routes batches of payloads onto ``npipes`` pipes by symbol hash (or by plan).

    Args:
        npipes: number of pipes (>= 1).
        hash: "mixed" (default, well spread) or "compat" (the C original's mapping).
        numpy_min_bytes: batch payload size from which the numpy lanes are taken
            (None: DEFAULT_NUMPY_MIN_BYTES).
        plan: planned pipes (tb.route.plan): its symbols go to their pipes, every other one by
            the hash, which must be the plan's; its pipe count must be npipes.
    Raises:
        RouteError: on a bad argument.
    """

    def __init__(
        self,
        npipes: int,
        *,
        hash: str = "mixed",
        numpy_min_bytes: int | None = None,
        plan: Plan | None = None,
    ) -> None:
        if not isinstance(npipes, int) or isinstance(npipes, bool) or npipes < 1:
            raise RouteError(f"npipes must be a positive integer, got {npipes!r}")
        if hash not in HASHES:
            raise RouteError(f"unknown hash {hash!r}; choose one of {', '.join(sorted(HASHES))}")
        if numpy_min_bytes is None:
            numpy_min_bytes = DEFAULT_NUMPY_MIN_BYTES
        elif not isinstance(numpy_min_bytes, int) or numpy_min_bytes < 0:
            raise RouteError(f"numpy_min_bytes must be >= 0, got {numpy_min_bytes!r}")
        if plan is not None and plan.pipes != npipes:
            raise PlanError(f"the plan is for {plan.pipes} pipes, not {npipes}")
        if plan is not None and plan.hash != hash:
            raise PlanError(f"the plan's unplanned symbols go by hash {plan.hash}, not {hash}")
        self.npipes = npipes
        self.hash = hash
        self.numpy_min_bytes = numpy_min_bytes
        self.totals = RouteTotals(npipes)  # (the reference and numpy lanes' batches)
        self.plan = plan
        # symbol bytes, npipes -> pipe; the numpy lanes' vector form; the span lane's plan
        self.pick = HASHES[hash] if plan is None else plan.pick
        self._vector = VECTOR_HASHES[hash] if plan is None else plan.table.vector_pipes
        self._table = None if plan is None else plan.table
        self.pipe_cache: dict[bytes, int] = {}  # symbol -> pipe, every lane's
        self.scratch = Scratch()

    def _pipe_of(self, sym: bytes) -> int:
        pipe = self.pipe_cache.get(sym)
        if pipe is None:
            if len(self.pipe_cache) >= SYMBOL_CACHE_MAX:
                self.pipe_cache.clear()
            pipe = self.pipe_cache[sym] = self.pick(sym, self.npipes)
        return pipe

    # -- any payloads: the reference, and numpy for large batches ---------------------------------
    def route(self, payloads: Sequence[bytes | bytearray | memoryview]) -> RouteBatch:
        """Route one batch, by numpy when it holds >= numpy_min_bytes of payload.

        Raises:
            RouteError: when a payload is not a bytes-like object.
        """
        size = 0
        try:
            for p in payloads:
                size += memoryview(p).nbytes
        except TypeError as exc:
            raise RouteError(f"payloads must be bytes-like: {exc}") from None
        if size >= self.numpy_min_bytes:
            return self.route_numpy(payloads)
        return self.route_python(payloads)

    def route_python(self, payloads: Sequence[bytes | bytearray | memoryview]) -> RouteBatch:
        """Route one batch with the reference (RouteError as route())."""
        try:
            batch = route_python(payloads, self.npipes, self._pipe_of, self.pipe_cache)
        except TypeError as exc:
            raise RouteError(f"payloads must be bytes-like: {exc}") from None
        self.totals.add(batch)
        return batch

    def route_numpy(self, payloads: Sequence[bytes | bytearray | memoryview]) -> RouteBatch:
        """Route one batch with the general numpy lane (RouteError as route())."""
        try:
            batch = route_numpy(payloads, self.npipes, self._pipe_of, self._vector, self.scratch)
        except TypeError as exc:
            raise RouteError(f"payloads must be bytes-like: {exc}") from None
        self.totals.add(batch)
        return batch

    # -- feed-shaped messages: None when declined -------------------------------------------------
    def route_arena(self, a: np.ndarray, starts, ends, payloads: list | None = None) -> tuple:
        """(batch, payloads) for the messages a[starts[i]:ends[i]] (a uint8 array with SPAN_PAD
        bytes to spare after the last): by the span lane from numpy_min_bytes of them, else by
        the small lane. batch is None when the lane declined them (the caller routes them by
        route(payloads)); payloads are the messages as views of `a` when the small lane made
        them (else None). With `payloads` given (messages that do not lie in an arena, starts
        and ends as if they were packed one after another), they are routed instead of a's."""
        if ends[-1] - starts[0] >= self.numpy_min_bytes:
            if payloads is not None:  # copied once into a padded buffer: rows read past the end
                a = self.scratch.packed(payloads, int(ends[-1]), SPAN_PAD)
            starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
            return self.route_spans(a, starts, ends), None
        if payloads is None:
            view = memoryview(a)
            payloads = [view[s:e] for s, e in zip(_as_list(starts), _as_list(ends), strict=True)]
        got = self.small_runs(payloads)
        if got is None:
            return None, payloads
        runs, counts, used, n = got
        return RouteBatch(runs, counts, n, n, [], 0, 0, 0, [], used), payloads  # (positional)

    def route_spans(self, a: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> RouteBatch | None:
        """The span lane on the messages a[starts[i]:ends[i]] (int64 arrays; `a` extends SPAN_PAD
        bytes past the last): the runs are views of the scratch output, valid until the next
        batch; None when declined."""
        return route_spans(a, starts, ends, self.npipes, self.hash, self.scratch, self._table)

    def route_frames(self, a: np.ndarray, pos: int, end: int, max_message: int):
        """The span lane on the plain text frames at the start of a[pos:end], found in its own
        byte pass: None when it cannot place the frames that way (scan them, then route the
        spans), else (batch or None when declined, starts, ends, where the frames stop)."""
        return route_frames(
            a, pos, end, max_message, self.npipes, self.hash, self.scratch, self._table
        )

    # The small lane: small_runs(payloads) -> (runs, counts, used, trades) or None.
    small_runs = small_runs


def pipe_for(
    symbol: str | bytes, npipes: int | None = None, *, hash: str = "mixed", plan: Plan | None = None
) -> int:
    """The pipe tb run puts `symbol` on: by `plan` when given (a Plan, or a plan file's path;
    its hash and pipe count), else by `hash` over `npipes` pipes -- for a worker, or tb consume,
    that needs to know where a symbol goes.

    Raises:
        RouteError: on a bad argument; PlanError when the plan cannot be read or is for
            another pipe count than npipes.
    """
    sym = symbol.encode("utf-8", "surrogatepass") if isinstance(symbol, str) else bytes(symbol)
    if plan is not None:
        if not isinstance(plan, Plan):
            plan = load_plan(plan)
        if npipes is not None and npipes != plan.pipes:
            raise PlanError(f"the plan is for {plan.pipes} pipes, not {npipes}")
        return plan.pick(sym, plan.pipes)
    if not isinstance(npipes, int) or isinstance(npipes, bool) or npipes < 1:
        raise RouteError(f"npipes must be a positive integer, got {npipes!r}")
    if hash not in HASHES:
        raise RouteError(f"unknown hash {hash!r}; choose one of {', '.join(sorted(HASHES))}")
    return HASHES[hash](sym, npipes)


def _as_list(x) -> list:
    return x.tolist() if isinstance(x, np.ndarray) else x

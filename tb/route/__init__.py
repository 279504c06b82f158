"""tb.route: the sans-I/O batch router.

Theory of operation. A batch is a sequence of websocket payloads, each a JSON array of event
objects. For each of N pipes the router builds ONE contiguous run of records
``[u32 LE length][the feed's own bytes of one object]``; all events of a symbol land on one pipe,
in feed order (message by message, object by object). Statuses (``"ev":"status"``) are decoded
and returned, never routed.

Three layers, one contract:
- fast rules (tb.route.fast_rules): what may be placed by byte scanning alone -- flat objects, no
  escapes, the instrument key found as a key with a string value;
- two implementations of them: pure Python (python_path, per object with bytes.find, cheap per
  batch) and numpy (numpy_path, whole batch at once, ~fixed cost per batch, cheap per trade);
  they give byte-identical RouteBatch results (tests/route/test_router_props.py);
- the slow path (slow): one message at a time by json.loads plus a span tokenizer, for whatever
  the fast rules refuse; its objects are counted in ``fallback``.

Router.route() picks numpy from ``numpy_min_bytes`` of payload per batch (measured crossover,
see DEFAULT_NUMPY_MIN_BYTES). Nothing here does I/O; bad data is counted, never raised.
"""

from __future__ import annotations

from collections.abc import Sequence

from .batch import SYMBOL_CACHE_MAX, RouteBatch, RouteError, RouteTotals
from .hashing import HASHES, VECTOR_HASHES
from .numpy_path import Scratch, route_numpy
from .python_path import route_python

__all__ = ["DEFAULT_NUMPY_MIN_BYTES", "RouteBatch", "RouteError", "RouteTotals", "Router"]

# Measured with tools/bench_route.py (2-core dev VM, shared and loaded; µs/trade, CPU time):
#   quiet 1-5 trades/msg:  11 KB  py 8.9  np 15.3 | 22 KB  py 8.7  np 8.8 | 44 KB  py 8.9  np 5.3
#   burst ~350/msg:        44 KB  py 4.4  np 4.5  | 84 KB  py 6.0  np 2.9 | 660 KB py 5.4 np 1.7
# numpy costs ~1.3 ms per batch however small; it wins from ~22-44 KB of payload. 32 KiB.
DEFAULT_NUMPY_MIN_BYTES = 32 * 1024


class Router:
    """Routes batches of payloads onto ``npipes`` pipes by symbol hash.

    Args:
        npipes: number of pipes (>= 1).
        hash: "mixed" (default, well spread) or "compat" (the C original's mapping).
        numpy_min_bytes: batch payload size from which route() takes the numpy path
            (None: DEFAULT_NUMPY_MIN_BYTES).
    Raises:
        RouteError: on a bad argument.
    """

    def __init__(
        self, npipes: int, *, hash: str = "mixed", numpy_min_bytes: int | None = None
    ) -> None:
        if not isinstance(npipes, int) or isinstance(npipes, bool) or npipes < 1:
            raise RouteError(f"npipes must be a positive integer, got {npipes!r}")
        if hash not in HASHES:
            raise RouteError(f"unknown hash {hash!r}; choose one of {', '.join(sorted(HASHES))}")
        if numpy_min_bytes is None:
            numpy_min_bytes = DEFAULT_NUMPY_MIN_BYTES
        elif not isinstance(numpy_min_bytes, int) or numpy_min_bytes < 0:
            raise RouteError(f"numpy_min_bytes must be >= 0, got {numpy_min_bytes!r}")
        self.npipes = npipes
        self.hash = hash
        self.numpy_min_bytes = numpy_min_bytes
        self.totals = RouteTotals(npipes)
        self._scalar = HASHES[hash]
        self._vector = VECTOR_HASHES[hash]
        self._cache: dict[bytes, int] = {}
        self._scratch = Scratch()

    def _pipe_of(self, sym: bytes) -> int:
        pipe = self._cache.get(sym)
        if pipe is None:
            if len(self._cache) >= SYMBOL_CACHE_MAX:
                self._cache.clear()
            pipe = self._cache[sym] = self._scalar(sym, self.npipes)
        return pipe

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
        """Route one batch with the pure-Python path (RouteError as route())."""
        try:
            batch = route_python(payloads, self.npipes, self._pipe_of, self._cache)
        except TypeError as exc:
            raise RouteError(f"payloads must be bytes-like: {exc}") from None
        self.totals.add(batch)
        return batch

    def route_numpy(self, payloads: Sequence[bytes | bytearray | memoryview]) -> RouteBatch:
        """Route one batch with the numpy path (RouteError as route())."""
        try:
            batch = route_numpy(payloads, self.npipes, self._pipe_of, self._vector, self._scratch)
        except TypeError as exc:
            raise RouteError(f"payloads must be bytes-like: {exc}") from None
        self.totals.add(batch)
        return batch

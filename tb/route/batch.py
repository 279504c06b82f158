"""The router's value types: its error family, one batch's result and the running totals."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MAX_ERRORS", "SYMBOL_CACHE_MAX", "RouteBatch", "RouteError", "RouteTotals"]

# At most this many error descriptions are kept per batch (the counters keep counting).
MAX_ERRORS = 8

# A symbol -> pipe cache starts over past this many symbols (bounded memory, ~20 MB): a stocks
# feed has ~12k, an options feed can name millions over a day.
SYMBOL_CACHE_MAX = 1 << 17


class RouteError(Exception):
    """Misuse of the router (bad arguments). Bad feed data is counted, never raised."""


@dataclass(slots=True)
class RouteBatch:
    """What one batch of payloads routed to.

    runs[i] is pipe i's contiguous ``[u32 LE length][object bytes]...`` run (None when empty);
    counts[i] its number of records. ``events = routed + len(statuses) + no_symbol``.
    """

    runs: list[bytes | bytearray | memoryview | None]
    counts: list[int]
    events: int = 0
    routed: int = 0
    statuses: list[dict] = field(default_factory=list)
    fallback: int = 0
    no_symbol: int = 0
    malformed: int = 0
    errors: list[str] = field(default_factory=list)
    used: list[int] | None = None  # the pipes with a run, when the router kept track (else None)


@dataclass(slots=True)
class RouteTotals:
    """Counters accumulated over every batch a Router has routed."""

    npipes: int
    batches: int = 0
    events: int = 0
    routed: int = 0
    statuses: int = 0
    fallback: int = 0
    no_symbol: int = 0
    malformed: int = 0
    per_pipe: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.per_pipe:
            self.per_pipe = [0] * self.npipes

    def add(self, batch: RouteBatch) -> None:
        """Fold one batch's counters in."""
        self.batches += 1
        self.events += batch.events
        self.routed += batch.routed
        self.statuses += len(batch.statuses)
        self.fallback += batch.fallback
        self.no_symbol += batch.no_symbol
        self.malformed += batch.malformed
        per_pipe = self.per_pipe
        for i, n in enumerate(batch.counts):
            per_pipe[i] += n

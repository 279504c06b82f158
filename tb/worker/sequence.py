"""Sequence anomalies: a per-symbol `q` that repeats or goes backwards.

The feed numbers each symbol's trades (and, separately, its quotes) with `q`: increasing and
unique per symbol, but not sequential -- the numbers are shared with events that are not sent to
this subscription (other event types, corrections, other venues' messages), so a jump of 40 is
normal and a jump can never prove that a trade was lost. What can be seen is the other way: a
`q` equal to the highest already seen for that (event type, symbol) is a repeat (a duplicate),
one below it went backwards (a resend or a reordering upstream). Both are counted, and each can
be handed to a callback; the highest `q` stays the reference, so one late event is one anomaly.

The check reads ev, sym (or pair) and q out of the record's bytes without decoding it; records
without all three (status-like records, tb's own records) are not checked. A worker that decodes
anyway calls check_event() on the decoded object instead, which is cheaper. The state is one int
per (event type, symbol) seen: a few hundred KiB for the whole stocks feed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Anomaly", "SequenceCheck"]

_EV = re.compile(rb'"ev"\s*:\s*"([^"\\]*)"')
_SYM = re.compile(rb'"(?:sym|pair)"\s*:\s*"([^"\\]*)"')
_Q = re.compile(rb'"q"\s*:\s*(-?\d+)')


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One event whose q is not above every q seen before for its (event type, symbol)."""

    kind: str  # "repeat" (q equals the highest seen) or "backwards" (q is below it)
    ev: str
    sym: str
    q: int
    highest: int  # the highest q seen before this event


class SequenceCheck:
    """Counts repeats and backward steps of q per (event type, symbol); see the module doc.

    on_anomaly: called with an Anomaly for each one (in the process that reads the pipe)."""

    def __init__(self, on_anomaly: Callable[[Anomaly], None] | None = None) -> None:
        self.on_anomaly = on_anomaly
        self.repeats = 0
        self.backwards = 0
        self.highest: dict[tuple[str, str], int] = {}

    def check(self, record: bytes | bytearray | memoryview) -> None:
        """Check one raw record (JSON bytes)."""
        m = _Q.search(record)
        if m is None:
            return
        ev, sym = _EV.search(record), _SYM.search(record)
        if ev is None or sym is None:
            return
        self.observe(ev.group(1).decode(), sym.group(1).decode("utf-8", "replace"), int(m[1]))

    def check_event(self, event: dict) -> None:
        """Check one decoded event."""
        q = event.get("q")
        sym = event.get("sym", event.get("pair"))
        if isinstance(q, int) and isinstance(sym, str):
            self.observe(str(event.get("ev")), sym, q)

    def observe(self, ev: str, sym: str, q: int) -> None:
        key = (ev, sym)
        highest = self.highest.get(key)
        if highest is None or q > highest:
            self.highest[key] = q
            return
        if q == highest:
            self.repeats += 1
            kind = "repeat"
        else:
            self.backwards += 1
            kind = "backwards"
        if self.on_anomaly is not None:
            self.on_anomaly(Anomaly(kind, ev, sym, q, highest))

    @property
    def anomalies(self) -> int:
        return self.repeats + self.backwards

    def summary(self) -> str:
        """One line: "q anomalies: R repeats, B backwards over S symbols checked"."""
        return (
            f"q anomalies: {self.repeats} repeats, {self.backwards} backwards "
            f"over {len(self.highest)} symbols checked"
        )

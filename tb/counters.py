"""tb run's counters: what every event became, and the line that reports them.

Every event that reaches the router is routed (then written to a pipe, or queued for one), a
status, or dropped by a named policy (no_symbol); malformed input is counted per message. The
pipe writer keeps its own per-pipe counts (written, queued, spliced); the run's end adds what
never reached a worker (undelivered_at_exit). The stats line (`--stats`, and the final line at
exit) is `key=value` pairs; parse_line() reads one back, for the tools that run tb as a process.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FINAL_PREFIX", "STATS_PREFIX", "Counters", "parse_line", "read_line"]

STATS_PREFIX = "tb stats: "  # then "N trades/s", then the counters
FINAL_PREFIX = "tb: final "  # the counters at exit, then the run's totals


@dataclass(slots=True)
class Counters:
    messages: int = 0
    bytes_in: int = 0
    events: int = 0
    routed: int = 0
    statuses: int = 0
    no_symbol: int = 0
    fallback: int = 0
    malformed: int = 0
    reconnects: int = 0
    disconnected_s: float = 0.0
    recvs: int = 0
    lost_in_worker: int = 0
    pauses: int = 0
    paused_s: float = 0.0
    worker_restarts: int = 0
    undelivered_at_exit: int = 0


def parse_line(line: str) -> dict[str, str]:
    """The key=value pairs of a stats line (values as text; a key without '=' is skipped)."""
    pairs = {}
    for word in line.split():
        key, eq, value = word.partition("=")
        if eq:
            pairs[key] = value
    return pairs


def read_line(line: str) -> tuple[str, dict[str, str]] | None:
    """("stats" or "final", its pairs) if `line` is one of tb run's counter lines, else None.
    A stats line's rate is under "trades_per_s" (the final line has its own)."""
    if line.startswith(STATS_PREFIX):
        pairs = parse_line(line)
        pairs["trades_per_s"] = line[len(STATS_PREFIX) :].split(" ", 1)[0].replace(",", "")
        return "stats", pairs
    if line.startswith(FINAL_PREFIX):
        return "final", parse_line(line)
    return None

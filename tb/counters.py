"""tb run's counters: what every event became, and the line that reports them.

Every event that reaches the router is routed (then written to a pipe, or queued for one), a
status, or dropped by a named policy (no_symbol); malformed input is counted per message. The
records in the pipes are the routed events plus the tb.gap records (--gap-records): routed +
gap_records = written + queued. The
pipe writer keeps its own per-pipe counts (written, queued, spliced); the run's end adds what
never reached a worker (undelivered_at_exit). The stats line (`--stats`, and the final line at
exit) is `key=value` pairs; parse_line() reads one back, for the tools that run tb as a process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "FINAL_PREFIX",
    "STATS_PREFIX",
    "Counters",
    "Snapshot",
    "format_counters",
    "parse_line",
    "read_line",
]

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
    gap_records: int = 0  # tb.gap records written (one per pipe per resumed stream)


@dataclass(slots=True)
class Snapshot:
    """Everything the stats line and the metrics report, read at one moment (off the hot path:
    the counters are copied, nothing is added per trade)."""

    c: Counters
    general: int = 0  # events the general router took
    written_records: list[int] = field(default_factory=list)  # per pipe
    queued_records: int = 0
    queued_bytes: int = 0
    queued_bytes_per_pipe: list[int] = field(default_factory=list)
    spilled_bytes: int = 0  # bytes ever written to the spools (--on-overflow spill)
    spool_bytes: int = 0  # of queued_bytes, those in the spools now (on disk)
    spool_bytes_per_pipe: list[int] = field(default_factory=list)
    spill_s: float = 0.0  # time during which the spools held records
    state: str = "connecting"  # connecting | streaming | paused | disconnected
    worker_alive: bool = False
    log_write_errors: int = 0
    feed_lag_s: float | None = None  # now minus the newest routed trade's exchange time
    since: float | None = None  # wall-clock time the present state began, if not streaming
    plan_share: float | None = None  # the plan's expected busiest share (0..1), with --plan

    @property
    def written(self) -> int:
        return sum(self.written_records)

    @property
    def pipe_shares(self) -> list[float]:
        """Each pipe's share of the records written (0..1)."""
        total = self.written
        return [n / total if total else 0.0 for n in self.written_records]


def format_counters(s: Snapshot) -> str:
    """The counters part of the stats line (and of the final line)."""
    c = s.c
    share = max(s.pipe_shares, default=0.0) * 100  # (the busiest pipe)
    depth = ",".join(f"{i}:{n}" for i, n in enumerate(s.queued_bytes_per_pipe) if n)
    return (
        f"received={c.events} routed={c.routed} written={s.written} queued={s.queued_records}"
        f" queued_bytes={s.queued_bytes} queue_per_pipe={depth or '-'}"
        f" dropped_no_symbol={c.no_symbol}"
        f" statuses={c.statuses} fallback={c.fallback} general={s.general}"
        f" malformed={c.malformed}"
        f" lost_in_worker={c.lost_in_worker} worker_restarts={c.worker_restarts}"
        f" pauses={c.pauses} paused_s={c.paused_s:.2f}"
        f" reconnects={c.reconnects} disconnected_s={c.disconnected_s:.2f}"
        f" max_pipe_share={share:.1f}%"
        + ("" if s.plan_share is None else f" plan_share={s.plan_share * 100:.1f}%")
        + f" state={s.state} gap_records={c.gap_records}"
        f" undelivered_at_exit={c.undelivered_at_exit} log_write_errors={s.log_write_errors}"
        f" spilled_bytes={s.spilled_bytes} spool_bytes={s.spool_bytes} spill_s={s.spill_s:.2f}"
    )


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

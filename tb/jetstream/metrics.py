"""`tb consume --metrics HOST:PORT`: its counters as Prometheus metrics, and its health.

Served by tb.metrics.MetricsServer, as tb run's are: a ConsumeSnapshot is read from the run
when Prometheus scrapes (copies of the counters, nothing added per record) and turned into
metric families named `tb_consume_...`; /healthz is 200 while connected to NATS, every
partition's consumer bound on the present connection and the worker alive, else 503 with the
reason (NATS unreachable since ..., consumers not bound, worker restarting, stopping).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tb.jetstream.consumer import ConsumeCounters
from tb.metrics import since

__all__ = ["ConsumeCollector", "ConsumeSnapshot", "consume_health"]


@dataclass(slots=True)
class ConsumeSnapshot:
    """tb consume's counters and states at one moment (read from another thread: copies)."""

    c: ConsumeCounters
    partitions: list[int]
    written_records: list[int] = field(default_factory=list)  # per pipe (= per partition)
    queued_records: int = 0
    queued_bytes_per_pipe: list[int] = field(default_factory=list)
    in_flight_bytes: int = 0
    connected: bool = False
    down_since: float | None = None  # wall-clock time the NATS connection was lost
    bound: list[bool] = field(default_factory=list)  # per partition
    worker_alive: bool = False
    worker_gave_up: bool = False
    stopping: bool = False

    @property
    def written(self) -> int:
        return sum(self.written_records)


def consume_health(s: ConsumeSnapshot) -> tuple[bool, str]:
    """(healthy, one line saying why): connected, consumers bound, the worker alive."""
    if s.stopping:
        return False, "stopping: flushing the pipes to the worker"
    if not s.connected:
        return False, "NATS unreachable" + since(s.down_since)
    unbound = [p for p, b in zip(s.partitions, s.bound, strict=True) if not b]
    if unbound:
        return False, "binding consumers: partitions " + ",".join(map(str, unbound)) + " not bound"
    if s.worker_gave_up:
        return False, "worker gave up (its restart policy)"
    if not s.worker_alive:
        return False, "worker restarting"
    return True, f"ok: connected to NATS, {len(s.partitions)} consumers bound, worker alive"


class ConsumeCollector:
    """Turns a ConsumeSnapshot into metric families at scrape time."""

    def __init__(self, snapshot: Callable[[], ConsumeSnapshot]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list:
        return []  # (no samples at registration: the run may not have begun)

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.snapshot()
        c = s.c
        counters = [
            ("records_consumed", "Records taken from the stream into the pipes.", c.consumed),
            ("messages_consumed", "Messages whose records went into the pipes.", c.messages),
            ("records_written", "Records written into the pipes.", s.written),
            ("messages_acked", "Messages acknowledged.", c.acked),
            ("messages_redelivered", "Messages the server delivered again.", c.redelivered),
            ("messages_skipped", "Redelivered messages the pipes already had.", c.skipped),
            ("messages_malformed", "Messages that were not whole records.", c.malformed),
            ("consumer_resets", "Consumers made again from their ack floor.", c.resets),
            ("nats_disconnects", "Times the connection to NATS was lost.", c.disconnects),
            ("worker_restarts", "Times the worker was started again.", c.worker_restarts),
            ("lost_in_worker", "Records a dying worker was inside of.", c.lost_in_worker),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(f"tb_consume_{name}", doc, value=value)
        queued = GaugeMetricFamily(
            "tb_consume_queued_bytes", "Bytes queued in tb for a partition's pipe.",
            labels=["partition"],
        )  # fmt: skip
        for p, n in zip(s.partitions, s.queued_bytes_per_pipe, strict=False):
            queued.add_metric([str(p)], n)
        yield queued
        bound = GaugeMetricFamily(
            "tb_consume_consumer_bound", "1 while a partition's consumer is bound.",
            labels=["partition"],
        )  # fmt: skip
        for p, b in zip(s.partitions, s.bound, strict=True):
            bound.add_metric([str(p)], 1 if b else 0)
        yield bound
        gauges = [
            ("queued_records", "Records queued in tb for the pipes.", s.queued_records),
            ("in_flight_bytes", "Bytes fetched and not yet acknowledged.", s.in_flight_bytes),
            ("nats_connected", "1 while connected to NATS.", 1 if s.connected else 0),
            ("worker_up", "1 while the worker runs.", 1 if s.worker_alive else 0),
            (
                "undelivered_at_exit",
                "Records consumed that never reached a worker (set at exit).",
                c.undelivered_at_exit,
            ),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(f"tb_consume_{name}", doc, value=value)

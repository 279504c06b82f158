"""`--metrics HOST:PORT`: Prometheus metrics and a health check, served beside the ingest.

Theory of operation. tb already counts everything it does (tb.counters); the exporter adds
nothing per trade. A custom collector (prometheus_client's Collector: `collect()` yields metric
families built at scrape time, the node_exporter pattern) asks the run for a Snapshot when
Prometheus scrapes and turns it into metric families. prometheus_client's own threaded WSGI
server answers in a daemon thread; a scrape costs the ingest loop only the GIL for the time it
takes to copy the counters and format the text.

Paths: /metrics (the Prometheus text format; the library's process collector adds CPU, RSS and
open fds) and /healthz: 200 with one line while connected, subscribed and the worker is alive,
else 503 with the reason (reconnecting since ..., worker restarting, socket paused for
backpressure since ...), so an orchestrator or a load balancer can act on it.

MetricsServer serves any collector and health check: `MetricsServer.for_run` is tb run's (this
module's collector over tb.counters' Snapshot); tb consume brings its own
(tb.jetstream.metrics).

Counters only rise within a run; at exit their last values equal the final stats line.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

from tb.counters import Snapshot

__all__ = ["MetricsError", "MetricsServer", "health", "parse_listen", "since"]

log = logging.getLogger("tb.metrics")


class MetricsError(Exception):
    """The metrics endpoint cannot be served (a bad address, a port in use, no library)."""


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT', '[::1]:PORT' or ':PORT' (all interfaces) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not HOST:PORT: {text!r} (e.g. 127.0.0.1:9108)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def since(t: float | None) -> str:
    """' since TIME (N s)' for a wall-clock time, or '' for None: the tail of a health line."""
    if t is None:
        return ""
    ago = max(0.0, time.time() - t)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    return f" since {when} ({ago:.0f} s)"


def health(s: Snapshot) -> tuple[bool, str]:
    """(healthy, one line saying why): connected, subscribed, the worker alive."""
    if s.state == "disconnected":
        return False, "reconnecting" + since(s.since)
    if not s.worker_alive:
        return False, "worker restarting"
    if s.state == "paused":
        return False, "socket paused for backpressure" + since(s.since)
    if s.state != "streaming":
        return False, "connecting (not yet subscribed)" + since(s.since)
    return True, "ok: streaming, worker alive"


class _Collector:
    """Turns a Snapshot into metric families at scrape time."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list:
        return []  # (no samples at registration: the run may not have begun)

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        try:
            s = self.snapshot()
        except Exception as exc:  # (a scrape must not print a traceback: say it, serve nothing)
            log.warning("metrics: cannot read tb's counters: %s: %s", type(exc).__name__, exc)
            return
        c = s.c
        counters = [
            ("tb_trades_received", "Events received from the feed (trades and others).", c.events),
            ("tb_trades_routed", "Events routed to a pipe (written or queued).", c.routed),
            ("tb_records_written", "Records written into the pipes.", s.written),
            ("tb_statuses", "Status messages from the feed server.", c.statuses),
            ("tb_malformed", "Malformed feed messages.", c.malformed),
            ("tb_dropped_no_symbol", "Events without a symbol, dropped by policy.", c.no_symbol),
            ("tb_reconnects", "Connections to the feed that ended and were retried.", c.reconnects),
            ("tb_disconnected_seconds", "Time without a feed connection.", c.disconnected_s),
            ("tb_worker_restarts", "Times the worker was started again.", c.worker_restarts),
            ("tb_lost_in_worker", "Records a dying worker was inside of.", c.lost_in_worker),
            (
                "tb_log_write_errors",
                "Log lines dropped: stderr closed or full.",
                s.log_write_errors,
            ),
            ("tb_socket_pauses", "Times the socket was paused for backpressure.", c.pauses),
            ("tb_socket_paused_seconds", "Time the socket was paused.", c.paused_s),
            ("tb_gap_records", "tb.gap records written (--gap-records).", c.gap_records),
            ("tb_spilled_bytes", "Bytes written to the spool files (--on-overflow spill).",
             s.spilled_bytes),
            ("tb_spill_seconds", "Time during which the spool files held records.", s.spill_s),
        ]  # fmt: skip
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)
        queued = GaugeMetricFamily(
            "tb_queued_bytes", "Bytes queued in tb for a pipe.", labels=["pipe"]
        )
        for i, n in enumerate(s.queued_bytes_per_pipe):
            queued.add_metric([str(i)], n)
        yield queued
        spool = GaugeMetricFamily(
            "tb_spool_bytes", "Bytes in a pipe's spool file, not yet read back.", labels=["pipe"]
        )
        for i, n in enumerate(s.spool_bytes_per_pipe):
            spool.add_metric([str(i)], n)
        yield spool
        share = GaugeMetricFamily(
            "tb_pipe_share", "A pipe's share of the records written (0-1).", labels=["pipe"]
        )
        for i, x in enumerate(s.pipe_shares):
            share.add_metric([str(i)], x)
        yield share
        yield GaugeMetricFamily(
            "tb_socket_paused",
            "1 while the feed socket is paused for backpressure.",
            value=1 if s.state == "paused" else 0,
        )
        yield GaugeMetricFamily(
            "tb_connected",
            "1 while connected and subscribed to the feed.",
            value=1 if s.state in ("streaming", "paused") else 0,
        )
        yield GaugeMetricFamily(
            "tb_worker_up", "1 while the worker runs.", value=1 if s.worker_alive else 0
        )
        if s.feed_lag_s is not None:
            yield GaugeMetricFamily(
                "tb_feed_lag_seconds",
                "Now minus the exchange timestamp of the newest trade routed.",
                value=s.feed_lag_s,
            )


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # (a scrape every few seconds is not news)


class MetricsServer:
    """Serves /metrics (`collector`'s families, and the process's) and /healthz (`check()`:
    healthy, and one line saying why) on (host, port) in a daemon thread."""

    @classmethod
    def for_run(cls, host: str, port: int, snapshot: Callable[[], Snapshot]) -> MetricsServer:
        """tb run's: its Snapshot's metrics and health."""
        return cls(host, port, _Collector(snapshot), lambda: health(snapshot()))

    def __init__(
        self, host: str, port: int, collector, check: Callable[[], tuple[bool, str]]
    ) -> None:
        try:
            from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
            from prometheus_client.exposition import ThreadingWSGIServer
        except ImportError:
            raise MetricsError(
                "--metrics needs the prometheus-client package: pip install 'tb[metrics]'"
            ) from None
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        registry.register(collector)
        metrics_app = make_wsgi_app(registry)

        def app(environ, start_response):
            if environ.get("PATH_INFO") == "/healthz":
                try:
                    ok, line = check()
                except Exception as exc:  # (never a traceback from the scrape thread)
                    ok, line = False, f"health unknown: {type(exc).__name__}: {exc}"
                status = "200 OK" if ok else "503 Service Unavailable"
                body = (line + "\n").encode()
                start_response(
                    status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
                )
                return [body]
            return metrics_app(environ, start_response)

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingWSGIServer):
            address_family = family

        try:
            self.httpd = make_server(host, port, app, Server, handler_class=_Quiet)
        except OSError as exc:
            raise MetricsError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="tb-metrics", daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", *self._shown())

    def _shown(self) -> tuple[str, int]:
        host = self.httpd.server_address[0]
        return (f"[{host}]" if ":" in host else host), self.port

    def close(self) -> None:
        """Stop serving (again: nothing)."""
        if self.httpd is None:
            return
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd = None

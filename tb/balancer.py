"""`tb run`: the balancer, which wires the parts together and owns the order of events.

Theory of operation. One process, one thread, one loop (tb.loop):

    transport --Ingest.on_readable--> Router --> PipeWriter --> pipes --> worker (Supervisor)
         ^                                  |
         +---- FeedClient (upgrade, websocket, session) <-- statuses

- The hot path is tb.ingest.Ingest; the balancer is its host: it makes each connection
  (transport + FeedClient), takes the statuses the router pulls out of the feed and feeds them
  to the FeedClient, sends what the FeedClient queues, and is told when a connection is lost.
- A lost connection is reported, dropped and retried after Backoff's delay (or ends the run,
  with --once). Once a second, Keepalive says when to ping and when a silent peer is dead, and
  the Supervisor looks for pipes whose reader has stalled.
- Backpressure: when the PipeWriter's queue passes --max-buffer, the socket stops being read
  (TCP backpressure) until the queue drains below half; --on-overflow says what happens when
  that lasts.
- Stopping: a stop signal (tb.signals), a fatal error or --once's end stops the loop; then the
  connection is dropped, the Supervisor flushes every queued record and lets the worker go by
  EOF, the final line is printed, and the exit code is the first reason -- or UNDELIVERED if a
  run that would end OK left routed records undelivered.
- Everything reported (--stats, the final line, --metrics) is read from one Snapshot.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import time
from dataclasses import dataclass
from time import perf_counter

from tb.counters import FINAL_PREFIX, STATS_PREFIX, Counters, Snapshot, format_counters
from tb.exitcode import ExitCode
from tb.feed import AuthFailed, FeedError
from tb.feed.client import FeedClient
from tb.feed.policy import Backoff, Keepalive, KeepaliveAction
from tb.ingest import Ingest
from tb.logs import sink, write_counters
from tb.loop import Loop, choose_loop
from tb.metrics import MetricsError, MetricsServer
from tb.pipes import PipeError, PipeWriter, open_pipes
from tb.pipes.gap import encode_gap
from tb.pipes.spool import open_spools, sweep_stale
from tb.route import Plan, Router
from tb.sched import DEFAULT_SLICE_US, request_slice
from tb.signals import StopSignals
from tb.supervisor import RestartPolicy, Supervisor
from tb.transport import FeedURL, TLSVerifyError, Transport, TransportError, connect
from tb.ws import State

__all__ = ["RunConfig", "Balancer"]

log = logging.getLogger("tb.run")


@dataclass(slots=True)
class RunConfig:
    url: FeedURL
    pipes: int
    worker: list[str]
    key: str
    key_source: str
    subscribe: str = "T.*"
    workdir: str = "."
    hash: str = "mixed"
    stats: float = 0.0
    once: bool = False
    max_buffer: int = 1 << 30
    max_message: int = 16 << 20
    loop: str = "auto"
    busy_poll: float = 0.0  # seconds the loop keeps polling after an event before it sleeps
    sched_slice_us: int = DEFAULT_SLICE_US  # the CPU time slice to ask for (0: the kernel's)
    splice: bool = True  # vmsplice big batches' runs into the pipes (else copy them)
    pipe_size: int | None = None
    tls: bool | None = None  # None: by the URL's scheme
    tls_mode: str = "auto"  # auto | ktls | userspace
    cafile: str | None = None
    insecure: bool = False
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    shutdown_timeout: float = 10.0
    backoff_min: float = 0.25
    backoff_max: float = 30.0
    numpy_min_bytes: int | None = None
    ping_interval: float = 20.0  # client pings this often while connected (0: never)
    idle_timeout: float = 60.0  # nothing at all received for this long: the peer is gone
    on_overflow: str = "block"  # block | exit, once the bound has held for overflow_timeout
    overflow_timeout: float = 30.0  # (spill: past the bound, to spool files in spill_dir)
    spill_dir: str | None = None  # None: the work dir
    max_spill: int = 8 << 30  # bytes in all spools together; past it, on_spill_full
    on_spill_full: str = "block"  # block | exit: on_overflow's policies once the spool is full
    stall_warning: float = 10.0  # warn when a pipe's queue has not moved for this long (0: never)
    restart: str = "on-failure"  # always | on-failure | never
    max_restarts: int = 10  # more restarts than this within restart_window: give up (exit 4)
    restart_window: float = 60.0
    metrics: tuple[str, int] | None = None  # serve /metrics and /healthz here
    gap_records: bool = False  # a tb.gap record to every pipe when streaming resumes
    plan: Plan | None = None  # planned pipes (tb plan), the hash for other symbols


class Balancer:
    """Runs `tb run` until a signal, a fatal error, or (with --once) the end of the connection."""

    def __init__(self, cfg: RunConfig, loop: Loop | None = None) -> None:
        self.cfg = cfg
        self.loop = loop or choose_loop(cfg.loop)
        self.loop.busy_poll = cfg.busy_poll
        self.router = Router(
            cfg.pipes, hash=cfg.hash, numpy_min_bytes=cfg.numpy_min_bytes, plan=cfg.plan
        )
        self.c = Counters()
        # The hot path: the arena, frames, routing, the writes (tb.ingest).
        self.ingest = Ingest(self.router, self.c, self, max_message=cfg.max_message)
        self.transport: Transport | None = None
        self.feed: FeedClient | None = None  # the connection's protocol state
        self.out = bytearray()
        self.reading = False
        self.exit_code: int | None = None
        self.backoff = Backoff(cfg.backoff_min, cfg.backoff_max)
        self.keepalive = Keepalive(cfg.ping_interval, cfg.idle_timeout)
        self.gap: tuple[int, str] | None = None  # (from ms, reason) of a gap not yet reported
        self.down_since: float | None = None
        self.conn_timer = None
        self.stopping = False
        self.signals: StopSignals | None = None
        self.t0 = time.monotonic()
        self.cpu0 = time.process_time()
        self.pipeset = None
        self.writer: PipeWriter | None = None
        self.supervisor: Supervisor | None = None
        self.metrics: MetricsServer | None = None
        self.paused_since: float | None = None
        self._last_stats = (self.t0, 0)  # (when, routed) at the last --stats line
        self.overflow_warned = 0.0
        self.cpu_last = 0.0
        self._routed_at_tick = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def run(self) -> int:
        """Start the worker, connect, run the loop; return the process exit code."""
        try:
            return self._run()
        finally:
            if self.metrics is not None:
                self.metrics.close()
            if self.writer is not None:
                self.writer.close_spools()  # (spool files never outlive the run)

    def _open_spools(self):
        """--on-overflow spill: say what a dead run left in the spill directory (and remove it),
        then create this run's spools; None (said) if the directory cannot hold them."""
        cfg = self.cfg
        where = cfg.spill_dir or cfg.workdir
        for path, size in sweep_stale(where):
            log.warning(
                "found a stale spool %s (%d bytes) left by a run that did not exit cleanly;"
                " discarded (its records were lost with that run)",
                path,
                size,
            )
        try:
            spools = open_spools(where, cfg.pipes)
        except PipeError as exc:
            log.error("%s", exc)
            return None
        log.info(
            "past --max-buffer %d MiB, records spill to %s (up to --max-spill %d MiB; then"
            " --on-spill-full %s)",
            cfg.max_buffer >> 20,
            os.path.abspath(where),
            cfg.max_spill >> 20,
            cfg.on_spill_full,
        )
        return spools

    def _run(self) -> int:
        cfg = self.cfg
        if cfg.metrics is not None:
            try:
                self.metrics = MetricsServer.for_run(*cfg.metrics, self.snapshot)
                self.ingest.sample_lag = True
            except MetricsError as exc:
                log.error("%s", exc)
                return ExitCode.USAGE
        if cfg.sched_slice_us:  # (the worker, forked later, gets the kernel's default)
            why = request_slice(cfg.sched_slice_us)
            if why is None:
                log.info("CPU time slice: %d µs (a wake-up preempts sooner)", cfg.sched_slice_us)
            else:
                log.info("CPU time slice: the kernel's default (%s)", why)
        try:
            self.pipeset = open_pipes(cfg.pipes, cfg.pipe_size)
            log.info(
                "%d pipes of %d KiB each%s",
                cfg.pipes,
                self.pipeset.size >> 10,
                "" if cfg.pipe_size else " (the most this kernel allows without privileges)",
            )
        except PipeError as exc:
            log.error("%s", exc)
            return ExitCode.WORKER
        spools = None
        if cfg.on_overflow == "spill":
            spools = self._open_spools()
            if spools is None:
                for fd in (*self.pipeset.read_fds, *self.pipeset.write_fds):
                    os.close(fd)
                return ExitCode.USAGE
        self.writer = PipeWriter(
            self.loop,
            self.pipeset.write_fds,
            max_buffer=cfg.max_buffer,
            on_drain=self._on_drain,
            splice=cfg.splice,
            spools=spools,
            max_spill=cfg.max_spill,
        )
        self.supervisor = Supervisor(
            self.loop,
            cfg.worker,
            cfg.workdir,
            self.pipeset,
            self.writer,
            self.c,
            policy=RestartPolicy(cfg.restart, cfg.max_restarts, cfg.restart_window),
            on_gave_up=lambda: self.stop(ExitCode.WORKER),
            stall_warning=cfg.stall_warning,
        )
        if not self.supervisor.start():
            self.writer.close()
            for fd in self.pipeset.read_fds:
                os.close(fd)
            return ExitCode.WORKER
        self.ingest.attach(self.writer)
        self.signals = StopSignals(self.loop, self._on_stop_signal)
        if self.metrics is not None:
            self.metrics.start()
        if cfg.stats > 0:
            self.loop.call_later(cfg.stats, self._print_stats)
        self.loop.call_soon(self._connect)
        self.loop.call_later(1.0, self._tick)
        # Everything imported and built so far lives as long as tb: keep it out of the cyclic
        # collector's scans, so a full collection mid-stream costs microseconds, not milliseconds.
        gc.freeze()
        try:
            try:
                self.loop.run()
            except PipeError as exc:  # (a pipe or a spool that failed under the writer)
                log.error("%s", exc)
                self.stop(ExitCode.ERROR)
            return self._finish()  # our handlers stay: a second signal during the flush exits
        finally:
            self.signals.restore()

    def _finish(self) -> int:
        """Flush every queued record to the worker, EOF, wait for it; the exit code."""
        self._drop_connection()
        undelivered = self.supervisor.shutdown(self.cfg.shutdown_timeout)
        self.c.undelivered_at_exit = undelivered
        self.loop.close()
        if undelivered:
            log.error(
                "%d records tb routed were never delivered to a worker (undelivered_at_exit)",
                undelivered,
            )
        write_counters("final", self.summary())
        if self.metrics is not None:
            self.metrics.close()  # (after the final line: its last scrape agrees with it)
        if self.exit_code is None:
            self.exit_code = ExitCode.OK
        if self.exit_code == ExitCode.OK and undelivered:
            self.exit_code = ExitCode.UNDELIVERED
        return self.exit_code

    def stop(self, code: int) -> None:
        """End the run with `code` (the first reason wins)."""
        if self.exit_code is None:
            self.exit_code = code
        self.stopping = True
        if self.supervisor is not None:
            self.supervisor.stopping = True
        self.loop.stop()

    def _on_stop_signal(self, name: str) -> None:
        log.info("%s: stopping, flushing the pipes", name)
        self.stop(ExitCode.OK)

    # -- connection -----------------------------------------------------------------------------
    def _connect(self) -> None:
        if self.stopping:
            return
        cfg = self.cfg
        log.info("connecting to %s", cfg.url)
        try:
            self.transport = connect(
                cfg.url,
                timeout=cfg.connect_timeout,
                tls=cfg.tls,
                tls_mode=cfg.tls_mode,
                cafile=cfg.cafile,
                insecure=cfg.insecure,
            )
        except TLSVerifyError as exc:
            log.error("%s", exc)
            self.stop(ExitCode.TLS)
            return
        except TransportError as exc:
            self.connection_lost(f"{exc}")
            return
        self.feed = FeedClient(
            cfg.url.host_header,
            cfg.url.path,
            cfg.key,
            cfg.key_source,
            cfg.subscribe,
            max_message=cfg.max_message,
        )
        self.ingest.start(self.transport, self.feed)
        self.ingest.gap_pending = self.gap is not None
        self.out.clear()
        self.keepalive.start(perf_counter())  # (perf_counter: the hot path's clock)
        self.send(self.feed.data_to_send())  # the upgrade request
        self._resume_reading()
        self.conn_timer = self.loop.call_later(cfg.handshake_timeout, self._handshake_timeout)

    def _tick(self) -> None:
        """Once a second: client pings, and dead-peer detection (nothing received for too long)."""
        self.loop.call_later(1.0, self._tick)
        if self.c.routed != self._routed_at_tick:
            self._routed_at_tick = self.c.routed
            self.cpu_last = time.process_time()
        self.supervisor.check_stalls(time.monotonic())
        feed = self.feed
        if self.transport is None or feed is None or not feed.upgraded:
            return
        if self.paused_since is not None:
            self._check_overflow(time.monotonic())
            return  # not reading on purpose: silence is ours, not the peer's
        now, last_rx = perf_counter(), self.ingest.last_rx
        action = self.keepalive.check(now, last_rx)
        if action is KeepaliveAction.DEAD:
            self.connection_lost(f"nothing received for {now - last_rx:.0f} s: the peer is gone")
        elif action is KeepaliveAction.PING and feed.ws.state is State.OPEN:
            feed.ws.send_ping(b"tb")
            self.send(feed.data_to_send())

    def _handshake_timeout(self) -> None:
        if self.feed is not None and not self.feed.streaming:
            phase = self.feed.phase
            self.connection_lost(
                f"no answer from the server during {phase} in {self.cfg.handshake_timeout:g} s"
            )

    def connection_lost(self, why: str, *, clean: bool = False) -> None:
        """Log why, drop the socket, and reconnect with backoff (or end, with --once)."""
        feed = self.feed
        reason = feed.disconnect_reason if feed else None
        was_streaming = feed is not None and feed.streaming
        if was_streaming and self.cfg.gap_records and self.gap is None:
            # the last data before the drop, on the wall clock, for the workers' tb.gap record
            last = time.time() - (perf_counter() - self.ingest.last_rx)
            self.gap = (int(last * 1000), why)
        self._drop_connection()
        if self.stopping:
            return
        if self.cfg.once:
            log.info("connection ended: %s", why) if clean else log.error(
                "connection ended: %s", why
            )
            self.stop(ExitCode.OK if clean else ExitCode.CONNECT)
            return
        delay = self.backoff.next_delay(was_streaming=was_streaming, reason=reason)
        self.c.reconnects += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
        log.warning("connection lost: %s; reconnecting in %.2f s", why, delay)
        self.loop.call_later(delay, self._connect)

    def _drop_connection(self) -> None:
        if self.conn_timer is not None:
            self.conn_timer.cancel()
            self.conn_timer = None
        if self.transport is not None:
            if self.reading:
                self.loop.remove_reader(self.transport.fd)
            self.loop.remove_writer(self.transport.fd)
            self.transport.close()
        self.transport = None
        self.reading = False
        self.feed = None
        self.ingest.reset()
        self.out.clear()

    def send(self, data: bytes) -> None:
        self.out += data
        self._flush_out()

    def _flush_out(self) -> None:
        t = self.transport
        if t is None:
            return
        try:
            while self.out:
                n = t.send(self.out)
                if n == 0:
                    self.loop.add_writer(t.fd, self._flush_out)
                    return
                del self.out[:n]
        except TransportError as exc:
            self.connection_lost(f"{exc}")
            return
        self.loop.remove_writer(t.fd)

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.reading:
            self.loop.add_reader(self.transport.fd, self.ingest.on_readable)  # (no step between)
            self.reading = True

    def _pause_reading(self) -> None:
        if self.transport is not None and self.reading:
            self.loop.remove_reader(self.transport.fd)
            self.reading = False

    def _on_drain(self) -> None:
        if self.paused_since is not None:
            paused = time.monotonic() - self.paused_since
            self.c.paused_s += paused
            self.paused_since = None
            log.info(
                "pipes drained below half the bound after %.2f s: reading the socket again", paused
            )
        self._resume_reading()

    def _check_overflow(self, now: float) -> None:
        """The bound has held since paused_since: apply --on-overflow once it lasts too long."""
        held = now - self.paused_since
        cfg = self.cfg
        if held < cfg.overflow_timeout:
            return
        policy = cfg.on_spill_full if cfg.on_overflow == "spill" else cfg.on_overflow
        if policy == "exit":
            log.error(
                "the pipes have been full for %.0f s (%d MiB queued): the worker cannot keep up;"
                " exiting (%s exit)",
                held,
                self.writer.queued_bytes >> 20,
                "--on-spill-full" if cfg.on_overflow == "spill" else "--on-overflow",
            )
            self.stop(ExitCode.OVERFLOW)
        elif now - self.overflow_warned >= cfg.overflow_timeout:
            self.overflow_warned = now
            log.warning(
                "the socket has been paused for %.0f s because the worker is not keeping up; the"
                " server may disconnect tb as a slow consumer",
                held,
            )

    # -- what the ingest calls (tb.ingest.IngestHost) and reads ------------------------------------
    def on_statuses(self, statuses: list[dict]) -> None:
        feed = self.feed
        self.c.statuses += len(statuses)
        try:
            began = feed.on_statuses(statuses)
        except AuthFailed as exc:
            log.error("%s", exc)
            self.stop(ExitCode.AUTH)
            return
        except FeedError as exc:
            self.connection_lost(f"{exc}")
            return
        out = feed.data_to_send()  # (the session's answers: auth, subscribe)
        if out:
            self.send(out)
        if began:
            if self.down_since is not None:
                gap = time.monotonic() - self.down_since
                self.c.disconnected_s += gap
                log.info("streaming again after %.2f s without data", gap)
                self.down_since = None
            else:
                log.info("streaming")
            if self.gap is not None:
                self.write_gap()

    def write_gap(self) -> None:
        """Write the pending tb.gap record to every pipe, ahead of the new connection's first
        event (the ingest calls this before its first write once a gap is pending)."""
        start, reason = self.gap
        self.gap = None
        self.ingest.gap_pending = False
        end = int(time.time() * 1000)
        record = encode_gap(start, max(start, end), reason)
        n = self.cfg.pipes
        self.writer.submit_small([record] * n, [1] * n, list(range(n)))
        self.c.gap_records += n
        log.info(
            "wrote a tb.gap record to every pipe: %d ms without data (%s)", end - start, reason
        )

    def pause_for_backpressure(self) -> None:
        if not self.reading:
            return
        w = self.writer
        if w.spill_refused:
            log.warning(
                "%s; %d MiB queued in memory (bound %d MiB), %d MiB spooled: pausing the socket"
                " until the worker catches up (--on-spill-full %s)",
                w.spill_refused,
                (w.queued_bytes - w.spool_bytes) >> 20,
                self.cfg.max_buffer >> 20,
                w.spool_bytes >> 20,
                self.cfg.on_spill_full,
            )
        else:
            log.warning(
                "%d MiB queued for the pipes (bound %d MiB): pausing the socket until the worker catches up",
                w.queued_bytes >> 20,
                self.cfg.max_buffer >> 20,
            )
        self._pause_reading()
        self.paused_since = self.overflow_warned = time.monotonic()
        self.c.pauses += 1

    # -- reporting ------------------------------------------------------------------------------
    def _print_stats(self) -> None:
        now = time.monotonic()
        routed = self.c.routed
        last = self._last_stats
        rate = (routed - last[1]) / max(1e-9, now - last[0])
        self._last_stats = (now, routed)
        write_counters("stats", f"{STATS_PREFIX}{rate:,.0f} trades/s {self.counters_line()}")
        self.loop.call_later(self.cfg.stats, self._print_stats)

    def snapshot(self) -> Snapshot:
        """The counters and states at this moment (for --stats, the final line, the metrics;
        safe to call from another thread: it only reads)."""
        # each attribute read once: the loop may change it between two reads of a scrape
        w, sup, feed = self.writer, self.supervisor, self.feed
        transport, paused_since, down_since = self.transport, self.paused_since, self.down_since
        since = None
        if transport is None:
            state, since = "disconnected", down_since
        elif paused_since is not None:
            state, since = "paused", paused_since
        elif feed is not None and feed.streaming:
            state = "streaming"
        else:
            state, since = "connecting", down_since
        return Snapshot(
            c=copy.copy(self.c),
            general=self.router.totals.events,
            written_records=list(w.written_records) if w else [],
            queued_records=w.queued_records if w else 0,
            queued_bytes=w.queued_bytes if w else 0,
            queued_bytes_per_pipe=list(w.queued_bytes_per_pipe) if w else [],
            spilled_bytes=w.spilled_bytes if w else 0,
            spool_bytes=w.spool_bytes if w else 0,
            spool_bytes_per_pipe=w.spool_bytes_per_pipe if w else [],
            spill_s=w.spill_s if w else 0.0,
            state=state,
            worker_alive=sup is not None and sup.running,
            log_write_errors=sink().errors,
            feed_lag_s=self._feed_lag(),
            plan_share=None if self.cfg.plan is None else self.cfg.plan.expected_share,
            since=None if since is None else time.time() - (time.monotonic() - since),
        )

    def _feed_lag(self) -> float | None:
        ms = self.ingest.newest_trade_ms()
        return None if ms is None else time.time() - ms / 1000

    def counters_line(self) -> str:
        return format_counters(self.snapshot())

    def summary(self) -> str:
        wall = time.monotonic() - self.t0
        cpu = time.process_time() - self.cpu0
        if self.c.routed != self._routed_at_tick:
            self.cpu_last = time.process_time()  # the last batches since the last tick
        # Per million over the streaming span only (first routed batch to the last): start-up,
        # the handshake and the shutdown wait are not per-trade costs.
        ingest = self.ingest
        span_cpu = self.cpu_last - ingest.cpu_first
        span = ingest.t_last - ingest.t_first
        per_m = span_cpu / (self.c.routed / 1e6) if self.c.routed else 0.0
        rate = self.c.routed / span if span > 0 else 0.0
        w = self.writer
        syscalls = self.c.recvs + (w.writes if w else 0)
        recv_s, frames_s, route_s, write_s = self.ingest.stage
        return (
            f"{FINAL_PREFIX}{self.counters_line()} bytes_in={self.c.bytes_in}"
            f" messages={self.c.messages} recvs={self.c.recvs} pipe_writes={w.writes if w else 0}"
            f" spliced_bytes={w.spliced_bytes if w else 0}"
            f" syscalls_per_trade={syscalls / max(1, self.c.routed):.4f}"
            f" stage_s=recv:{recv_s:.3f},frames:{frames_s:.3f},route:{route_s:.3f},write:{write_s:.3f}"
            f" stream_s={span:.3f} trades_per_s={rate:.0f}"
            f" wall_s={wall:.2f} cpu_s={cpu:.2f} stream_cpu_s={span_cpu:.3f}"
            f" cpu_s_per_million={per_m:.3f}"
        )

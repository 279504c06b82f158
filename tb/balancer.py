"""The balancer: one loop that takes the feed in and spreads it over the pipes (`tb run`).

Theory of operation:

    socket --recv_into--> arena[start:end] --frames--> payload spans --Router--> per-pipe
    runs --PipeWriter.submit--> pipes --> worker

The hot path (receive, frames, route, hand to the writer) is tb.ingest.Ingest: one receive is
one batch, every complete message is routed at once, and each pipe gets at most one write (its
module docstring tells how). The balancer around it owns the connection and the feed session:
status objects come back from the ingest and drive the Session; what the session wants to
send goes out as masked text frames. When the queued bytes pass --max-buffer the socket stops being
read (TCP backpressure) until the pipes drain. The worker's death arrives on its pidfd, signals on
the wakeup fd; both are ordinary readers on the loop.

Counters: every event that reached the router is routed (then written or queued), a status, or
counted as no_symbol; malformed input is counted per message. They are printed by --stats and at
exit.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import random
import time
from dataclasses import dataclass
from time import perf_counter

from tb.counters import FINAL_PREFIX, STATS_PREFIX, Counters, Snapshot, format_counters
from tb.exitcode import ExitCode
from tb.feed import DISCONNECT_REASONS, AuthFailed, FeedError, Session
from tb.ingest import MAX_RECV, Ingest
from tb.logs import sink, write_counters
from tb.loop import Loop, choose_loop
from tb.metrics import MetricsError, MetricsServer
from tb.pipes import PipeError, PipeWriter, open_pipes
from tb.pipes.spool import open_spools, sweep_stale
from tb.route import Router
from tb.sched import DEFAULT_SLICE_US, request_slice
from tb.signals import StopSignals
from tb.supervisor import RestartPolicy, Supervisor
from tb.transport import FeedURL, TLSVerifyError, Transport, TransportError, connect
from tb.ws import Connection, State, client_request

__all__ = ["RunConfig", "Balancer", "MAX_RECV"]

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


class Balancer:
    """Runs `tb run` until a signal, a fatal error, or (with --once) the end of the connection."""

    def __init__(self, cfg: RunConfig, loop: Loop | None = None) -> None:
        self.cfg = cfg
        self.loop = loop or choose_loop(cfg.loop)
        self.loop.busy_poll = cfg.busy_poll
        self.router = Router(cfg.pipes, hash=cfg.hash, numpy_min_bytes=cfg.numpy_min_bytes)
        self.c = Counters()
        # The hot path: the arena, frames, routing, the writes (tb.ingest).
        self.ingest = Ingest(self.router, self.c, self, max_message=cfg.max_message)
        self._on_readable = self.ingest.on_readable  # (the socket's reader: no step between)
        self.stage = self.ingest.stage  # seconds in recv, frame scan, route, pipe write
        self.transport: Transport | None = None
        self.ws: Connection | None = None
        self.session: Session | None = None
        self.ws_key = ""
        self.out = bytearray()
        self.reading = False
        self.exit_code: int | None = None
        self.backoff = cfg.backoff_min
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
        self.last_ping = 0.0
        self.paused_since: float | None = None
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
                self.metrics = MetricsServer(*cfg.metrics, self.snapshot)
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
            self.loop.run()
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
            self._connection_lost(f"{exc}")
            return
        request, self.ws_key = client_request(cfg.url.host_header, cfg.url.path)
        self.ws = Connection(client=True, max_message=cfg.max_message)
        self.session = Session(cfg.key, cfg.key_source, cfg.subscribe)
        self.ingest.start(self.transport, self.ws, self.ws_key)
        self.out.clear()
        self.last_ping = perf_counter()  # (perf_counter: the hot path's clock)
        self._send(request)
        self._resume_reading()
        self.conn_timer = self.loop.call_later(cfg.handshake_timeout, self._handshake_timeout)

    def _tick(self) -> None:
        """Once a second: client pings, and dead-peer detection (nothing received for too long)."""
        self.loop.call_later(1.0, self._tick)
        if self.c.routed != self._routed_at_tick:
            self._routed_at_tick = self.c.routed
            self.cpu_last = time.process_time()
        self.supervisor.check_stalls(time.monotonic())
        if self.transport is None or self.ws is None or not self.upgraded:
            return
        cfg = self.cfg
        if self.paused_since is not None:
            self._check_overflow(time.monotonic())
            return  # not reading on purpose: silence is ours, not the peer's
        now = perf_counter()
        if cfg.idle_timeout and now - self.last_rx > cfg.idle_timeout:
            self._connection_lost(
                f"nothing received for {now - self.last_rx:.0f} s: the peer is gone"
            )
            return
        if (
            cfg.ping_interval
            and now - self.last_ping >= cfg.ping_interval
            and self.ws.state is State.OPEN
        ):
            self.last_ping = now
            self.ws.send_ping(b"tb")
            self._send(self.ws.data_to_send())

    def _handshake_timeout(self) -> None:
        if self.session is not None and not self.session.streaming:
            phase = "websocket upgrade" if not self.upgraded else self.session.phase.value
            self._connection_lost(
                f"no answer from the server during {phase} in {self.cfg.handshake_timeout:g} s"
            )

    def _connection_lost(self, why: str, *, clean: bool = False) -> None:
        """Log why, drop the socket, and reconnect with backoff (or end, with --once)."""
        reason = self.session.disconnect_reason if self.session else None
        was_streaming = self.session is not None and self.session.streaming
        self._drop_connection()
        if self.stopping:
            return
        if self.cfg.once:
            log.info("connection ended: %s", why) if clean else log.error(
                "connection ended: %s", why
            )
            self.stop(ExitCode.OK if clean else ExitCode.CONNECT)
            return
        if was_streaming:
            self.backoff = self.cfg.backoff_min
        delay = self.backoff
        if reason in DISCONNECT_REASONS:
            delay = max(delay, 5.0)  # the server asked us to go away: do not hammer it
        delay *= 0.5 + random.random()  # jitter: many clients must not reconnect in step
        self.backoff = min(self.cfg.backoff_max, self.backoff * 2)
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
        self.ws = None
        self.ingest.reset()
        self.out.clear()

    def _send(self, data: bytes) -> None:
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
            self._connection_lost(f"{exc}")
            return
        self.loop.remove_writer(t.fd)

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.reading:
            self.loop.add_reader(self.transport.fd, self._on_readable)
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
    def connection_lost(self, why: str, *, clean: bool = False) -> None:
        self._connection_lost(why, clean=clean)

    def send(self, data: bytes) -> None:
        self._send(data)

    def on_statuses(self, statuses: list[dict]) -> None:
        self._on_statuses(statuses)

    def pause_for_backpressure(self) -> None:
        self._pause_for_backpressure()

    @property
    def upgraded(self) -> bool:
        return self.ingest.upgraded

    @property
    def last_rx(self) -> float:
        return self.ingest.last_rx

    @property
    def cpu_first(self) -> float:
        return self.ingest.cpu_first

    @property
    def t_first(self) -> float:
        return self.ingest.t_first

    @property
    def t_last(self) -> float:
        return self.ingest.t_last

    def _on_statuses(self, statuses: list[dict]) -> None:
        session = self.session
        was_streaming = session.streaming
        for status in statuses:
            self.c.statuses += 1
            try:
                session.on_status(status)
            except AuthFailed as exc:
                log.error("%s", exc)
                self.stop(ExitCode.AUTH)
                return
            except FeedError as exc:
                self._connection_lost(f"{exc}")
                return
        if self.ws.state is State.OPEN and session.outgoing:
            for message in session.outgoing:
                self.ws.send_text(message)
            self._send(self.ws.data_to_send())
        session.outgoing.clear()
        if session.streaming and not was_streaming:
            if self.down_since is not None:
                gap = time.monotonic() - self.down_since
                self.c.disconnected_s += gap
                log.info("streaming again after %.2f s without data", gap)
                self.down_since = None
            else:
                log.info("streaming")

    def _pause_for_backpressure(self) -> None:
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
        last = getattr(self, "_last_stats", (self.t0, 0))
        rate = (routed - last[1]) / max(1e-9, now - last[0])
        self._last_stats = (now, routed)
        write_counters("stats", f"{STATS_PREFIX}{rate:,.0f} trades/s {self.counters_line()}")
        self.loop.call_later(self.cfg.stats, self._print_stats)

    def snapshot(self) -> Snapshot:
        """The counters and states at this moment (for --stats, the final line, the metrics;
        safe to call from another thread: it only reads)."""
        w, sup = self.writer, self.supervisor
        since = None
        if self.transport is None:
            state, since = "disconnected", self.down_since
        elif self.paused_since is not None:
            state, since = "paused", self.paused_since
        elif self.session is not None and self.session.streaming:
            state = "streaming"
        else:
            state, since = "connecting", self.down_since
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
            since=None if since is None else time.time() - (time.monotonic() - since),
        )

    def counters_line(self) -> str:
        return format_counters(self.snapshot())

    def summary(self) -> str:
        wall = time.monotonic() - self.t0
        cpu = time.process_time() - self.cpu0
        if self.c.routed != self._routed_at_tick:
            self.cpu_last = time.process_time()  # the last batches since the last tick
        # Per million over the streaming span only (first routed batch to the last): start-up,
        # the handshake and the shutdown wait are not per-trade costs.
        span_cpu = self.cpu_last - self.cpu_first
        span = self.t_last - self.t_first
        per_m = span_cpu / (self.c.routed / 1e6) if self.c.routed else 0.0
        rate = self.c.routed / span if span > 0 else 0.0
        w = self.writer
        syscalls = self.c.recvs + (w.writes if w else 0)
        recv_s, frames_s, route_s, write_s = self.stage
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

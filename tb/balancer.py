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

import gc
import logging
import os
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass
from time import perf_counter

from tb.cli import STOP_SIGNALS
from tb.feed import DISCONNECT_REASONS, AuthFailed, FeedError, Session
from tb.ingest import MAX_RECV, Ingest
from tb.loop import Loop, choose_loop
from tb.pipes import PipeError, PipeWriter, open_pipes, spawn_worker
from tb.route import Router
from tb.sched import DEFAULT_SLICE_US, request_slice
from tb.transport import FeedURL, TLSVerifyError, Transport, TransportError, connect
from tb.ws import Connection, State, client_request

__all__ = ["RunConfig", "Balancer", "EXIT_CODES", "MAX_RECV"]

log = logging.getLogger("tb.run")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_AUTH, EXIT_WORKER, EXIT_CONNECT, EXIT_TLS, EXIT_OVERFLOW = (
    range(8)
)
EXIT_CODES = {
    EXIT_OK: "clean shutdown (signal, or --once and the server closed normally)",
    EXIT_ERROR: "internal error",
    EXIT_USAGE: "bad command line",
    EXIT_AUTH: "authentication failed (wrong key)",
    EXIT_WORKER: "the worker exited or could not be started",
    EXIT_CONNECT: "--once: the connection failed or ended abnormally",
    EXIT_TLS: "TLS setup failed: the certificate did not verify, or --tls ktls is unavailable",
    EXIT_OVERFLOW: "--on-overflow exit: the pipes stayed full past --overflow-timeout",
}


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
    overflow_timeout: float = 30.0
    stall_warning: float = 10.0  # warn when a pipe's queue has not moved for this long (0: never)
    restart: str = "on-failure"  # always | on-failure | never
    max_restarts: int = 10  # more restarts than this within restart_window: give up (exit 4)
    restart_window: float = 60.0


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
        self.signals = 0
        self.t0 = time.monotonic()
        self.cpu0 = time.process_time()
        self.pipeset = None
        self.writer: PipeWriter | None = None
        self.worker = None
        self.restarts: list[float] = []
        self.worker_started = 0.0
        self.restart_delay = 0.1
        self.last_ping = 0.0
        self.paused_since: float | None = None
        self.overflow_warned = 0.0
        self.cpu_last = 0.0
        self._routed_at_tick = 0
        # pipe -> [its written_bytes when last seen moving, when, warned]: pipes with a queue
        self._stalls: dict[int, list] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    def run(self) -> int:
        """Start the worker, connect, run the loop; return the process exit code."""
        cfg = self.cfg
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
            return EXIT_WORKER
        if not self._start_worker():
            return EXIT_WORKER
        self.writer = PipeWriter(
            self.loop,
            self.pipeset.write_fds,
            max_buffer=cfg.max_buffer,
            on_drain=self._on_drain,
            splice=cfg.splice,
        )
        self.ingest.attach(self.writer)
        self._install_signals()
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
            self._restore_signals()

    def _finish(self) -> int:
        self._drop_connection()
        writer, worker = self.writer, self.worker
        flushed = True
        if worker.poll() is None and writer.queued_bytes:
            flushed = self._flush_while_progressing()
        writer.close()
        # The worker sees EOF on every pipe once the write ends are closed.
        rc = worker.wait(self.cfg.shutdown_timeout)
        if rc is None:
            log.warning(
                "worker still running %.0f s after EOF: terminating it", self.cfg.shutdown_timeout
            )
            worker.terminate()
            rc = worker.wait(2.0)
            if rc is None:
                worker.kill()
                rc = worker.wait(2.0)
        if self.exit_code != EXIT_WORKER:
            log.info("worker %s", worker.describe(rc))
        for fd in self.pipeset.read_fds:
            os.close(fd)
        self.loop.close()
        print(self.summary(), file=sys.stderr, flush=True)
        if self.exit_code is None:
            self.exit_code = EXIT_OK
        if self.exit_code == EXIT_OK and not flushed:
            self.exit_code = EXIT_ERROR
        return self.exit_code

    def _flush_while_progressing(self) -> bool:
        """Write out every queued record; give up only if the worker takes nothing for
        --shutdown-timeout seconds (a slow worker that keeps reading is waited for)."""
        writer, worker = self.writer, self.worker
        log.info("flushing %d queued records to the worker", writer.queued_records)
        stalled = 0.0
        while writer.queued_bytes and worker.poll() is None:
            before = sum(writer.written_bytes)
            t = time.monotonic()
            if writer.flush(min(1.0, self.cfg.shutdown_timeout)):
                return True
            if sum(writer.written_bytes) != before:
                stalled = 0.0
            else:
                stalled += time.monotonic() - t
                if stalled >= self.cfg.shutdown_timeout:
                    break
        if not writer.queued_bytes:
            return True
        log.error(
            "the worker %s: %d records (%d bytes) could not be written",
            f"took nothing for {self.cfg.shutdown_timeout:.0f} s"
            if worker.poll() is None
            else "exited",
            writer.queued_records,
            writer.queued_bytes,
        )
        return False

    def stop(self, code: int) -> None:
        """End the run with `code` (the first reason wins)."""
        if self.exit_code is None:
            self.exit_code = code
        self.stopping = True
        self.loop.stop()

    # -- signals and the worker -----------------------------------------------------------------
    def _install_signals(self) -> None:
        self._sig_r, self._sig_w = socket.socketpair()
        self._sig_r.setblocking(False)
        self._sig_w.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(self._sig_w.fileno(), warn_on_full_buffer=False)
        self._old_handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        self.loop.add_reader(self._sig_r.fileno(), self._drain_signal_fd)

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._sig_r.close()  # the loop is closed by now: nothing to unregister
        self._sig_w.close()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals += 1
        if self.signals > 1:
            # A second signal: the user wants out now, queued records or not.
            print(f"tb: second {signal.Signals(signum).name}: exiting at once", file=sys.stderr)
            os._exit(130)
        log.info("%s: stopping, flushing the pipes", signal.Signals(signum).name)
        self.stop(EXIT_OK)

    def _drain_signal_fd(self) -> None:
        try:
            while self._sig_r.recv(512):
                pass
        except BlockingIOError:
            pass

    def _on_worker_exit(self) -> None:
        rc = self.worker.poll()
        if rc is None:
            return
        self.loop.remove_reader(self.worker.pidfd)
        self.worker.close()
        w = self.writer
        log.error(
            "worker %s; %d records (%d bytes) queued for it",
            self.worker.describe(rc),
            w.queued_records,
            w.queued_bytes,
        )
        # What the dead worker left in the pipes stays there for the next one, minus the torn
        # record it died inside, if any (see PipeWriter.resync).
        for i, fd in enumerate(self.pipeset.read_fds):
            lost = w.resync(i, fd)
            if lost:
                self.c.lost_in_worker += lost
                log.warning("pipe %d: the worker died inside a record: %d record lost", i, lost)
        policy = self.cfg.restart
        if policy == "never" or (policy == "on-failure" and rc == 0) or self.stopping:
            self.stop(EXIT_WORKER)
            return
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < self.cfg.restart_window]
        if len(self.restarts) >= self.cfg.max_restarts:
            log.error(
                "the worker died %d times in %.0f s: giving up",
                len(self.restarts) + 1,
                self.cfg.restart_window,
            )
            self.stop(EXIT_WORKER)
            return
        if now - self.worker_started > 30:
            self.restart_delay = 0.1  # it ran a good while: this is a fresh failure
        # Capped at 1 s: while the worker is down the feed queues up (1M trades/s at the open).
        delay, self.restart_delay = self.restart_delay, min(1.0, self.restart_delay * 2)
        self.restarts.append(now)
        log.warning("restarting the worker in %.1f s (records keep queueing meanwhile)", delay)
        self.loop.call_later(delay, self._start_worker)

    def _start_worker(self) -> bool:
        if self.stopping:
            return False
        try:
            self.worker = spawn_worker(self.cfg.worker, self.pipeset.read_fds, self.cfg.workdir)
        except PipeError as exc:
            log.error("%s", exc)
            self.stop(EXIT_WORKER)
            return False
        self.worker_started = time.monotonic()
        if self.restarts:
            self.c.worker_restarts += 1
        log.info("worker %s started (pid %d)", " ".join(self.cfg.worker), self.worker.pid)
        self.loop.add_reader(self.worker.pidfd, self._on_worker_exit)
        return True

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
            self.stop(EXIT_TLS)
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
        if self.cfg.stall_warning and (self.writer.queued_bytes or self._stalls):
            self._check_stalls(time.monotonic())
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

    def _check_stalls(self, now: float) -> None:
        """Warn once about each pipe whose queue its reader has not taken from for
        --stall-warning seconds (a live worker not reading it: nothing else would say so until
        --max-buffer fills), and say when it moves again."""
        w, stalls, argv_fds = self.writer, self._stalls, self.pipeset.read_fds
        for i, queued in enumerate(w.queued_bytes_per_pipe):
            seen = stalls.get(i)
            if not queued:
                if seen is not None:
                    del stalls[i]
                    if seen[2]:
                        log.info(
                            "pipe %d (worker fd %d) drained: its reader is back", i, argv_fds[i]
                        )
                continue
            written = w.written_bytes[i]
            if seen is None or seen[0] != written:
                if seen is not None and seen[2]:
                    log.info("pipe %d (worker fd %d) is being read again", i, argv_fds[i])
                stalls[i] = [written, now, False]
            elif not seen[2] and now - seen[1] >= self.cfg.stall_warning:
                seen[2] = True
                log.warning(
                    "pipe %d (worker fd %d): its reader has taken nothing for %.0f s; %d records "
                    "(%d KiB) wait behind it. Is the worker reading every pipe it was given?",
                    i,
                    argv_fds[i],
                    now - seen[1],
                    w.queued_records_in(i),
                    queued >> 10,
                )

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
            self.stop(EXIT_OK if clean else EXIT_CONNECT)
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
        if cfg.on_overflow == "exit":
            log.error(
                "the pipes have been full for %.0f s (%d MiB queued): the worker cannot keep up;"
                " exiting (--on-overflow exit)",
                held,
                self.writer.queued_bytes >> 20,
            )
            self.stop(EXIT_OVERFLOW)
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
                self.stop(EXIT_AUTH)
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
        log.warning(
            "%d MiB queued for the pipes (bound %d MiB): pausing the socket until the worker catches up",
            self.writer.queued_bytes >> 20,
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
        print(f"tb stats: {rate:,.0f} trades/s {self.counters_line()}", file=sys.stderr, flush=True)
        self.loop.call_later(self.cfg.stats, self._print_stats)

    def counters_line(self) -> str:
        c, w = self.c, self.writer
        written = sum(w.written_records) if w else 0
        queued = w.queued_records if w else 0
        share = max(w.written_records) / written * 100 if written else 0.0  # (busiest pipe)
        state = "streaming" if self.session and self.session.streaming else "connecting"
        if self.transport is None:
            state = "disconnected"
        elif self.paused_since is not None:
            state = "paused"
        depth = ",".join(
            f"{i}:{n}" for i, n in enumerate(w.queued_bytes_per_pipe if w else ()) if n
        )
        return (
            f"received={c.events} routed={c.routed} written={written} queued={queued}"
            f" queued_bytes={w.queued_bytes if w else 0} queue_per_pipe={depth or '-'}"
            f" dropped_no_symbol={c.no_symbol}"
            f" statuses={c.statuses} fallback={c.fallback} general={self.router.totals.events}"
            f" malformed={c.malformed}"
            f" lost_in_worker={c.lost_in_worker} worker_restarts={c.worker_restarts}"
            f" pauses={c.pauses} paused_s={c.paused_s:.2f}"
            f" reconnects={c.reconnects} disconnected_s={c.disconnected_s:.2f}"
            f" max_pipe_share={share:.1f}% state={state}"
        )

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
            f"tb: final {self.counters_line()} bytes_in={self.c.bytes_in}"
            f" messages={self.c.messages} recvs={self.c.recvs} pipe_writes={w.writes if w else 0}"
            f" spliced_bytes={w.spliced_bytes if w else 0}"
            f" syscalls_per_trade={syscalls / max(1, self.c.routed):.4f}"
            f" stage_s=recv:{recv_s:.3f},frames:{frames_s:.3f},route:{route_s:.3f},write:{write_s:.3f}"
            f" stream_s={span:.3f} trades_per_s={rate:.0f}"
            f" wall_s={wall:.2f} cpu_s={cpu:.2f} stream_cpu_s={span_cpu:.3f}"
            f" cpu_s_per_million={per_m:.3f}"
        )

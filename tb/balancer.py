"""The balancer: one loop that takes the feed in and spreads it over the pipes (`tb run`).

Theory of operation:

    socket --recv_into--> arena[start:end] --ws.receive--> payload views --Router.route--> per-pipe
    runs --PipeWriter.submit--> pipes --> worker

One receive is one batch: every complete frame in the arena is scanned, every complete message is
routed at once, and each pipe gets at most one write. The plain text frames at the front of the
arena are taken straight from it: a large receive by route_frames (its "}" pass finds the frames
too), a smaller one by scan_data_frames and then the span router -- or, under numpy's
crossover (a trickle's receive of a few trades), by the small lane: small_runs' bare per-pipe
lists straight to PipeWriter.submit_small, each step counted as the wake-up's cost is per
bytecode (and a receive of whole text frames only, the usual one, has them read by
text_frames, without the scan). What follows them (control frames, fragments, a partial
frame) goes through ws.Connection. The payload views point into the arena and are dropped
before the arena is compacted (the PipeWriter copies whatever it cannot write at once).
Status objects come back from the router and drive the feed Session; what the session wants to
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

import numpy as np

from tb.counters import FINAL_PREFIX, STATS_PREFIX, Counters, Snapshot, format_counters
from tb.exitcode import ExitCode
from tb.feed import DISCONNECT_REASONS, AuthFailed, FeedError, Session
from tb.logs import sink, write_counters
from tb.loop import Loop, choose_loop
from tb.metrics import MetricsError, MetricsServer
from tb.pipes import PipeError, PipeWriter, open_pipes
from tb.route import Router
from tb.route.hashing import HASHES
from tb.route.spans import SPAN_PAD, Scratch, route_frames, route_small, route_spans, small_runs
from tb.sched import DEFAULT_SLICE_US, request_slice
from tb.signals import StopSignals
from tb.supervisor import RestartPolicy, Supervisor
from tb.transport import FeedURL, TLSVerifyError, Transport, TransportError, connect
from tb.ws import (
    Connection,
    InvalidHandshake,
    ProtocolError,
    State,
    client_request,
    parse_client_response,
)
from tb.ws.scan import as_list, scan_data_frames, text_frames, utf8_errors

__all__ = ["RunConfig", "Balancer", "MAX_RECV"]

MAX_RECV = 4 << 20  # bytes per receive (and so per batch) at most
SCAN_SCRATCH_MIN = 64 << 10  # smaller regions are scanned without the reused mask buffer

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
    overflow_timeout: float = 30.0
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
        # The arena holds at least one whole message of max size plus its frame header.
        self.arena = bytearray(max(1 << 20, cfg.max_message + 64) + SPAN_PAD)
        self.view = memoryview(self.arena)
        self.arr = np.frombuffer(self.arena, dtype=np.uint8)  # the same bytes, for the span router
        self.scratch = Scratch()  # the span router's buffers, reused batch after batch
        self.packed = np.zeros(0, np.uint8)  # the Connection's messages, for the span router
        self.symbol_pipes: dict[bytes, int] = {}  # the small-batch lane's symbol -> pipe cache
        self.pick = HASHES[cfg.hash]  # (the small lane's hash function)
        self.small_max = self.router.numpy_min_bytes  # smaller batches take the small lane
        self.max_message = cfg.max_message
        self.room = len(self.arena) - SPAN_PAD  # data never goes past this: row reads need slack
        self.front = self.view[: min(self.room, MAX_RECV)]  # a receive into an empty arena
        self.start = self.end = 0
        self.transport: Transport | None = None
        self.ws: Connection | None = None
        self.session: Session | None = None
        self.ws_key = ""
        self.upgraded = False
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
        self.last_rx = 0.0
        self.last_ping = 0.0
        self.paused_since: float | None = None
        self.overflow_warned = 0.0
        self.stage = [0.0, 0.0, 0.0, 0.0]  # seconds in recv, frame scan, route, pipe write
        self.cpu_first = self.cpu_last = 0.0
        self.t_first = self.t_last = 0.0
        self._routed_at_tick = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def run(self) -> int:
        """Start the worker, connect, run the loop; return the process exit code."""
        try:
            return self._run()
        finally:
            if self.metrics is not None:
                self.metrics.close()

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
        self.writer = PipeWriter(
            self.loop,
            self.pipeset.write_fds,
            max_buffer=cfg.max_buffer,
            on_drain=self._on_drain,
            splice=cfg.splice,
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
        self.scratch.outputs = self.writer.output_buffer  # big batches' runs are spliced
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
        self.upgraded = False
        self.start = self.end = 0
        self.out.clear()
        self.last_rx = self.last_ping = perf_counter()  # (perf_counter: the hot path's clock)
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
            self.stop(ExitCode.OVERFLOW)
        elif now - self.overflow_warned >= cfg.overflow_timeout:
            self.overflow_warned = now
            log.warning(
                "the socket has been paused for %.0f s because the worker is not keeping up; the"
                " server may disconnect tb as a slow consumer",
                held,
            )

    # -- the hot path ---------------------------------------------------------------------------
    def _on_readable(self) -> None:
        view = self.view
        stage = self.stage
        t0 = perf_counter()
        try:
            # One receive is one batch; capping it keeps --max-buffer a tight bound (checked after
            # each batch) while staying large enough that per-batch costs vanish per trade.
            end = self.end
            n = self.transport.recv_into(
                self.front if not end else view[end : min(self.room, end + MAX_RECV)]
            )
        except TransportError as exc:
            self._connection_lost(f"{exc}")
            return
        if n is None:
            return
        if n == 0:
            self._connection_lost("the server closed the TCP connection")
            return
        c = self.c
        c.recvs += 1
        c.bytes_in += n
        self.end += n
        t1 = self.last_rx = perf_counter()
        stage[0] += t1 - t0
        if not self.upgraded and not self._upgrade():
            return
        ws = self.ws
        if ws.state is State.OPEN and not ws.in_fragmented_message:
            # The plain data frames, as spans straight from the arena; whatever follows them
            # (control frames, fragments, a partial frame) goes through the Connection below.
            start, end = self.start, self.end
            size = end - start
            framed = None
            lean = True  # (the small lane may be tried)
            if size < self.small_max:
                payloads = text_frames(view, start, end, self.max_message)
                if payloads is not None:  # whole text frames only: a trickle's usual receive
                    if self._route_small(payloads, t1):  # of trades: the lean way, no scan
                        self.start = self.end = 0
                        writer = self.writer  # (no queue, the usual case: no call)
                        if writer.queued_bytes and writer.over_limit():
                            self._pause_for_backpressure()
                        return
                    lean = False  # (declined: the scan below finds the same frames)
            else:
                # a large receive: its frames are found by the router's own byte pass
                framed = route_frames(
                    self.arr,
                    self.start,
                    self.end,
                    self.cfg.max_message,
                    self.cfg.pipes,
                    self.cfg.hash,
                    self.scratch,
                )
            if framed is not None:  # (at least one message, all text frames)
                batch, starts, ends, stop = framed
                self.start = stop
                routed = self._route_spans(starts, ends, [1] * len(starts), t1, batch)
            else:
                starts, ends, ops, stop = scan_data_frames(
                    self.arr,
                    view,
                    self.start,
                    self.end,
                    self.cfg.max_message,
                    self.scratch.bools(size + 63) if size >= SCAN_SCRATCH_MIN else None,
                )
                routed = True
                if len(starts):
                    self.start = stop
                    stage[1] += perf_counter() - t1
                    routed = self._route_spans(starts, ends, ops, lean=lean)
            if len(starts):
                if not routed or self.transport is None:
                    return
                if stop == self.end:
                    # Only whole data frames arrived (the usual case): nothing for the
                    # Connection, and the arena starts over at its front.
                    self.start = self.end = 0
                    if self.writer.over_limit():
                        self._pause_for_backpressure()
                    return
                t1 = perf_counter()
        try:
            consumed = ws.receive(view[self.start : self.end])
        except ProtocolError as exc:
            log.error(
                "websocket protocol error from the server: %s (closing with %d)",
                exc,
                exc.close_code,
            )
            self._route(ws.messages)  # messages completed before the bad frame are kept
            self._send(ws.data_to_send())
            self._connection_lost(f"protocol error: {exc}")
            return
        self.start += consumed
        stage[1] += perf_counter() - t1
        if ws.messages:
            self._route_messages(ws.messages)
        pending = ws.data_to_send()
        if pending:
            self._send(pending)
        if self.transport is None:
            return  # the session failed while routing
        if ws.state is State.CLOSED:
            code, reason = ws.close_code, ws.close_reason
            self._connection_lost(
                f"the server closed the websocket ({code} {reason})".rstrip(), clean=code == 1000
            )
            return
        self._compact()
        if self.writer.over_limit():
            self._pause_for_backpressure()

    def _route_small(self, payloads: list, t0: float) -> bool:
        """Route a small batch of trades the lean way (small_runs' lists to submit_small, and
        _account's steps for trades only); False, having done nothing, if it is not one."""
        got = small_runs(payloads, self.cfg.pipes, self.pick, self.symbol_pipes)
        if got is None:
            return False
        runs, counts, used, n = got
        c = self.c
        c.messages += len(payloads)
        if n:
            self._write(self.writer.submit_small, runs, counts, used, t0)
            c.events += n
            c.routed += n
        return True

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

    def _route_spans(self, starts, ends, ops, t0=None, batch=None, lean=True) -> bool:
        """Route the scanned data frames; False if the connection failed (bad UTF-8).

        With `t0`, route_frames (started at t0) has made the feed-shaped attempt: its `batch`.
        Not `lean`: the small lane has declined these frames already."""
        payloads = None
        if t0 is None:
            t0 = perf_counter()
            if ends[-1] - starts[0] < self.small_max:  # (as _fast would; the lean way first)
                payloads = self._payloads(starts, ends)
                if lean and self._route_small(payloads, t0):
                    return True
                batch = None
            else:
                batch, payloads = self._fast(starts, ends)
        if batch is None:
            k = self._leading_statuses(starts, ends)
            if 0 < k < len(starts):
                # the first receive after subscribing: the session's statuses, then the stream.
                # The stream the fast way, then the statuses the general way (handled after the
                # trades were written, as when the whole batch goes the general way).
                rest, _ = self._fast(starts[k:], ends[k:])
                if rest is not None:
                    self.c.messages += len(starts) - k
                    self._account(rest, t0)
                    return self._route_general(starts[:k], ends[:k], ops[:k], None)
        if batch is not None:
            self.c.messages += len(starts)
            self._account(batch, t0)
            return True
        return self._route_general(starts, ends, ops, payloads)

    def _fast(self, starts, ends, payloads=None) -> tuple:
        """(the span router's batch or None, the payload views if it made them) for the
        messages at starts/ends in the arena -- or, with `payloads`, these messages."""
        # numpy's fixed cost per batch (~0.5-1 ms) pays only for big batches; small ones (a
        # quiet feed's few trades per receive) take the same rules in plain Python
        if ends[-1] - starts[0] >= self.small_max:
            arr = self.arr
            if payloads is not None:  # copied once into a padded buffer: rows read past the end
                arr = self._packed(payloads, ends[-1])
            starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
            batch = route_spans(arr, starts, ends, self.cfg.pipes, self.cfg.hash, self.scratch)
            return batch, None
        if payloads is None:
            payloads = self._payloads(starts, ends)
        return route_small(payloads, self.cfg.pipes, self.cfg.hash, self.symbol_pipes), payloads

    def _packed(self, payloads: list, size: int) -> np.ndarray:
        """The payloads one after the other in a buffer with SPAN_PAD bytes to spare."""
        if len(self.packed) < size + SPAN_PAD:
            self.packed = np.zeros(max(size + SPAN_PAD, 2 * len(self.packed)), np.uint8)
        view = memoryview(self.packed)
        at = 0
        for m in payloads:
            view[at : at + len(m)] = m
            at += len(m)
        return self.packed

    def _leading_statuses(self, starts, ends, most: int = 8) -> int:
        """How many of the first messages (at most `most`) are status messages."""
        view = self.view
        k = 0
        for s in as_list(starts[:most]):
            head = view[s : s + 16]
            if head != b'[{"ev":"status",' and head != b'[{"ev": "status"':
                break
            k += 1
        return k

    def _route_general(self, starts, ends, ops, payloads) -> bool:
        """Not feed-shaped (statuses, other layouts, unicode...): the general router, after the
        UTF-8 check that the span router's ASCII test would have made unnecessary."""
        bad, error = utf8_errors(self.view, starts, ends, ops)
        if payloads is None:
            payloads = self._payloads(starts, ends)
        if bad >= 0:
            if bad:  # the messages before the bad one arrived whole: they are routed
                self._route(payloads[:bad])
            log.error(
                "websocket protocol error from the server: text message is not UTF-8 (%s)", error
            )
            if self.ws is not None:
                self.ws.send_close(1007, "invalid UTF-8")
                self._send(self.ws.data_to_send())
            self._connection_lost("protocol error: a text message is not UTF-8")
            return False
        self._route(payloads)
        return self.transport is not None

    def _payloads(self, starts, ends) -> list:
        """The scanned messages as views of the arena (valid until the arena is compacted)."""
        view = self.view
        if len(starts) == 1:  # a quiet feed's usual receive
            return [view[starts[0] : ends[0]]]
        return [view[s:e] for s, e in zip(as_list(starts), as_list(ends), strict=True)]

    def _route_messages(self, messages: list) -> None:
        """Route what the Connection delivered (fragmented messages, frames after a control
        frame): the fast way when feed-shaped, as the spans are, else the general way."""
        t0 = perf_counter()
        lens = np.fromiter(map(len, messages), np.int64, len(messages))
        ends = np.cumsum(lens)
        batch, _ = self._fast(ends - lens, ends, messages)  # (spans as if packed one after another)
        if batch is None:
            self._route(messages)
            return
        self.c.messages += len(messages)
        messages.clear()
        self._account(batch, t0)

    def _route(self, messages: list) -> None:
        t0 = perf_counter()
        batch = self.router.route(messages)
        self.c.messages += len(messages)
        messages.clear()  # the views into the arena must not outlive this batch
        self._account(batch, t0)

    def _account(self, batch, t0: float) -> None:
        c = self.c
        if batch.routed:
            self._write(self.writer.submit, batch.runs, batch.counts, batch.used, t0)
        c.events += batch.events
        c.routed += batch.routed
        c.fallback += batch.fallback
        c.no_symbol += batch.no_symbol
        if batch.malformed:
            c.malformed += batch.malformed
            log.warning(
                "malformed feed data (%d): %s", batch.malformed, "; ".join(batch.errors[:3])
            )
        if batch.statuses:
            self._on_statuses(batch.statuses)

    def _write(self, submit, runs: list, counts: list[int], used, t0: float) -> None:
        """Hand routed runs to the writer (`submit`: its method for this kind of batch), timing
        route (since t0) and write; before the batch's trades are added to the routed count."""
        c = self.c
        t1 = perf_counter()
        if not c.routed:
            self.cpu_first = time.process_time()
            self.t_first = t1
        stage = self.stage
        stage[2] += t1 - t0
        submit(runs, counts, used)
        # (process_time is a slow syscall on some VMs: sampled here per batch only as wall
        # time; the CPU end of the span is taken once a second in _tick and at the end)
        self.t_last = t2 = perf_counter()
        stage[3] += t2 - t1

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

    def _upgrade(self) -> bool:
        try:
            n = parse_client_response(self.view[: self.end], self.ws_key)
        except InvalidHandshake as exc:
            status = getattr(exc, "status", None)
            if status in (401, 403):
                log.error("the server refused the websocket upgrade: %s", exc)
            self._connection_lost(f"websocket upgrade failed: {exc}")
            return False
        if n == 0:
            if self.end >= self.room:
                self._connection_lost("websocket upgrade response too large")
            return False
        self.upgraded = True
        self.start = n
        return True

    def _compact(self) -> None:
        # Views into the arena were dropped in _route; moving the tail is safe now.
        start, end = self.start, self.end
        if start == end:
            self.start = self.end = 0
        elif self.room - end < (256 << 10):
            tail = end - start
            self.arena[:tail] = self.view[start:end].tobytes()
            self.start, self.end = 0, tail

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

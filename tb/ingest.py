"""The ingest hot path: socket -> receive arena -> frames -> Router -> PipeWriter, one receive at a time.

Theory of operation (tb's version of the C original's read loop):

    socket --recv_into--> arena[pos:end] --frames--> payload spans --Router--> per-pipe runs
    --PipeWriter--> pipes

One receive is one batch: every complete frame in the arena is found, every complete message is
routed at once, and each pipe gets at most one write. The arena is one preallocated bytearray
(with SPAN_PAD bytes past its usable room, which the span lane's fixed-width row reads need);
payloads are memoryview/numpy spans of it, never copies, and they are dropped before the arena
is compacted (the PipeWriter copies whatever it cannot write at once).

The plain text frames at the front of the arena are taken straight from it, by size:
- a small receive of whole text frames (a trickle's: one to a few frames of 1-5 trades) is read
  by text_frames and routed by the small lane straight to PipeWriter.submit_small: no spans, no
  RouteBatch, as a trickle's wake-up costs per bytecode;
- a large receive goes to the span lane's route_frames, whose one "}" pass finds the frames too;
- anything else is scanned by scan_data_frames and its spans go to Router.route_arena.
A batch the feed-shaped lanes decline goes the general way (Router.route) after a UTF-8 check
(the lanes' ASCII test made it unnecessary for what they take); a first receive that opens with
the session's statuses has them split off and the trades behind them routed the fast way. What
follows the plain frames (control frames, fragments, a partial frame) goes through the sans-I/O
ws.Connection, and its complete messages take the same lanes.

The ingest owns the arena and the connection's receive state; its host (the Balancer) owns the
connection itself and the session: it calls start() on each new connection and reset() when it
drops one, and the ingest calls the host back to send bytes, hand over statuses, report a lost
connection, and pause reading when the pipes' queue passes its bound.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

import numpy as np

from tb.feed.client import FeedClient
from tb.pipes import PipeWriter
from tb.route import SPAN_PAD, Router
from tb.transport import Transport, TransportError
from tb.ws import Connection, InvalidHandshake, ProtocolError, State
from tb.ws.scan import as_list, scan_data_frames, text_frames, utf8_errors

__all__ = ["Ingest", "IngestHost", "StageTimes", "MAX_RECV"]

MAX_RECV = 4 << 20  # bytes per receive (and so per batch) at most
SCAN_SCRATCH_MIN = 64 << 10  # smaller regions are scanned without the reused mask buffer
LAG_TAIL = 320  # bytes kept of a batch's last run: its last record's "t" lies in them

log = logging.getLogger("tb.run")


class IngestHost(Protocol):
    """What the ingest calls back (the Balancer)."""

    def connection_lost(self, why: str, *, clean: bool = False) -> None: ...
    def send(self, data: bytes) -> None: ...
    def on_statuses(self, statuses: list[dict]) -> None: ...
    def pause_for_backpressure(self) -> None: ...
    def write_gap(self) -> None: ...


@dataclass(slots=True)
class StageTimes:
    """Seconds spent in each stage of the hot path (printed at exit as stage_s=...)."""

    recv: float = 0.0  # the receive syscall
    frames: float = 0.0  # the frame scan (route_frames' is counted in route)
    route: float = 0.0  # the router
    write: float = 0.0  # the pipe writes

    def __iter__(self):
        return iter((self.recv, self.frames, self.route, self.write))


class Ingest:
    """The hot path of one balancer: receives, frames, routes and hands runs to the writer.

    Args:
        router: the Router (its lanes, cache and scratch).
        counters: the balancer's Counters (messages, bytes_in, events, routed, statuses -- by
            the host --, no_symbol, fallback, malformed, recvs are counted here).
        host: the IngestHost.
        max_message: the largest message accepted, in bytes (the arena holds one whole).
    """

    def __init__(self, router: Router, counters, host: IngestHost, *, max_message: int) -> None:
        self.router = router
        self.c = counters
        self.host = host
        self.max_message = max_message
        self.small_max = router.numpy_min_bytes  # smaller receives take the small lane
        self.writer: PipeWriter | None = None
        # The arena holds at least one whole message of max size plus its frame header.
        self.arena = bytearray(max(1 << 20, max_message + 64) + SPAN_PAD)
        self.view = memoryview(self.arena)
        self.arr = np.frombuffer(self.arena, dtype=np.uint8)  # the same bytes, for numpy
        self.room = len(self.arena) - SPAN_PAD  # data never goes past this: row reads need slack
        self.front = self.view[: min(self.room, MAX_RECV)]  # a receive into an empty arena
        self.pos = self.end = 0  # the bytes not taken yet: arena[pos:end]
        self.transport: Transport | None = None
        self.feed: FeedClient | None = None
        self.ws: Connection | None = None  # (the feed's websocket)
        self.upgraded = False
        self.gap_pending = False  # the host has a tb.gap record to write before the next batch
        # With --metrics: the last bytes of each batch's last run, where the newest trade's
        # exchange time is found at scrape time (newest_trade_ms); None: not sampled.
        self.lag_tail: bytes | None = None
        self.sample_lag = False
        self.last_rx = 0.0  # perf_counter() of the last receive
        self.stage = StageTimes()
        self.t_first = self.t_last = 0.0  # perf_counter() of the first and last routed batch
        self.cpu_first = 0.0  # process_time() at the first routed batch

    def attach(self, writer: PipeWriter) -> None:
        """Hand routed runs to `writer` from now on (the span lane builds big batches' runs in
        its splice buffers)."""
        self.writer = writer
        self.router.scratch.outputs = writer.output_buffer

    def start(self, transport: Transport, feed: FeedClient) -> None:
        """A new connection: `feed`'s upgrade request is on its way."""
        self.transport, self.feed, self.ws = transport, feed, feed.ws
        self.upgraded = False
        self.pos = self.end = 0
        self.last_rx = perf_counter()

    def reset(self) -> None:
        """The connection is gone: whatever is still running on this receive stops."""
        self.transport = None
        self.feed = None
        self.ws = None

    # -- the hot path -----------------------------------------------------------------------------
    def on_readable(self) -> None:
        """The socket is readable: take one receive through to the pipes."""
        view, stage, host = self.view, self.stage, self.host
        # 1. Receive into the arena, after what is left of the last one. One receive is one
        #    batch; capping it keeps --max-buffer a tight bound (checked after each batch) while
        #    staying large enough that per-batch costs vanish per trade.
        t0 = perf_counter()
        end = self.end
        try:
            n = self.transport.recv_into(
                self.front if not end else view[end : min(self.room, end + MAX_RECV)]
            )
        except TransportError as exc:
            host.connection_lost(f"{exc}")
            return
        if n is None:  # (TLS: a record not complete yet)
            return
        if n == 0:
            host.connection_lost("the server closed the TCP connection")
            return
        c = self.c
        c.recvs += 1
        c.bytes_in += n
        end = self.end = end + n
        t1 = self.last_rx = perf_counter()
        stage.recv += t1 - t0
        # 2. The connection's first bytes answer the upgrade request.
        if not self.upgraded and not self._upgrade():
            return
        ws = self.ws
        # 3. The plain text frames at the front of the arena, straight from it.
        if ws.state is State.OPEN and not ws.in_fragmented_message:
            size = end - self.pos
            tried_small = False
            framed = None
            if size < self.small_max:
                # 3a. A trickle's receive: whole text frames of a few trades, the small lane's
                #     runs straight to the writer -- the whole wake-up when they are trades.
                # (relies on text_frames taking only whole final unmasked TEXT frames, else None:
                # tests/ws/test_scan.py pins it against Connection.receive)
                payloads = text_frames(view, self.pos, end, self.max_message)
                if payloads is not None:
                    if self._route_small(payloads, t1):
                        self.pos = self.end = 0
                        writer = self.writer  # (no queue, the usual case: no call)
                        if writer.queued_bytes and writer.over_limit():
                            host.pause_for_backpressure()
                        return
                    tried_small = True  # (declined: the scan below finds the same frames)
            else:
                # 3b. A large receive: the span lane finds its frames in its own byte pass
                #     (relies on each feed message ending "}]" right before the next header;
                #     pinned by tests/route/test_router_props.py and tests/fuzz run_frames).
                framed = self.router.route_frames(self.arr, self.pos, end, self.max_message)
            if framed is not None:
                batch, starts, ends, stop = framed
                self.pos = stop
                ops = [1] * len(starts)  # (text frames)
                if batch is not None:
                    self.c.messages += len(starts)
                    self._account(batch, t1)
                    routed = True
                else:
                    routed = self._route_declined(starts, ends, ops, None, t1)
            else:
                # 3c. Anything else: scan the frames, then route their spans.
                mask = self.router.scratch.bools(size + 63) if size >= SCAN_SCRATCH_MIN else None
                starts, ends, ops, stop = scan_data_frames(
                    self.arr, view, self.pos, end, self.max_message, mask
                )
                routed = True
                if len(starts):
                    self.pos = stop
                    t2 = perf_counter()
                    stage.frames += t2 - t1
                    if tried_small:
                        routed = self._route_declined(starts, ends, ops, None, t2)
                    else:
                        routed = self._route_scanned(starts, ends, ops, t2)
            if len(starts):
                if not routed or self.transport is None:
                    return  # the connection failed (bad UTF-8, or the session while routing)
                if stop == end:
                    # Only whole data frames arrived (the usual case): nothing for the
                    # Connection, and the arena starts over at its front.
                    self.pos = self.end = 0
                    if self.writer.over_limit():
                        host.pause_for_backpressure()
                    return
                t1 = perf_counter()
        # 4. What follows them (control frames, fragments, a partial frame): the Connection.
        try:
            consumed = ws.receive(view[self.pos : end])
        except ProtocolError as exc:
            log.error(
                "websocket protocol error from the server: %s (closing with %d)",
                exc,
                exc.close_code,
            )
            self._route(ws.messages)  # messages completed before the bad frame are kept
            host.send(ws.data_to_send())
            host.connection_lost(f"protocol error: {exc}")
            return
        self.pos += consumed
        stage.frames += perf_counter() - t1
        if ws.messages:
            self._route_messages(ws.messages)
        pending = ws.data_to_send()  # (pongs, the answer to a close)
        if pending:
            host.send(pending)
        if self.transport is None:
            return  # the session failed while routing
        if ws.state is State.CLOSED:
            code, reason = ws.close_code, ws.close_reason
            host.connection_lost(
                f"the server closed the websocket ({code} {reason})".rstrip(), clean=code == 1000
            )
            return
        # 5. Keep the arena's room for the next receive, and stop reading past the bound.
        self._compact()
        if self.writer.over_limit():
            host.pause_for_backpressure()

    def _route_small(self, payloads: list, t0: float) -> bool:
        """Route a small batch of trades by the small lane, its bare lists straight to
        submit_small; False, having written nothing, if the lane declines it."""
        got = self.router.small_runs(payloads)
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

    def _route_scanned(self, starts, ends, ops, t0: float) -> bool:
        """Route scanned data frames (spans into the arena): a feed-shaped lane by size, else
        the general way. False if the connection failed (bad UTF-8)."""
        batch, payloads = self.router.route_arena(self.arr, starts, ends)
        if batch is None:
            return self._route_declined(starts, ends, ops, payloads, t0)
        self.c.messages += len(starts)
        self._account(batch, t0)
        return True

    def _route_declined(self, starts, ends, ops, payloads, t0: float) -> bool:
        """Route data frames the feed-shaped lanes declined (`payloads`: their views, if made).

        The first receive after subscribing holds the session's statuses, then the stream: the
        stream the fast way, then the statuses the general way (handled after the trades were
        written, as when the whole batch goes the general way)."""
        k = self._leading_statuses(starts, ends)
        if 0 < k < len(starts):
            rest, _ = self.router.route_arena(self.arr, starts[k:], ends[k:])
            if rest is not None:
                self.c.messages += len(starts) - k
                self._account(rest, t0)
                return self._route_general(starts[:k], ends[:k], ops[:k], None)
        return self._route_general(starts, ends, ops, payloads)

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
        UTF-8 check that the feed-shaped lanes' ASCII test would have made unnecessary."""
        bad, error = utf8_errors(self.view, starts, ends, ops)
        if payloads is None:
            view = self.view
            payloads = [view[s:e] for s, e in zip(as_list(starts), as_list(ends), strict=True)]
        if bad >= 0:
            if bad:  # the messages before the bad one arrived whole: they are routed
                self._route(payloads[:bad])
            log.error(
                "websocket protocol error from the server: text message is not UTF-8 (%s)", error
            )
            if self.ws is not None:
                self.ws.send_close(1007, "invalid UTF-8")
                self.host.send(self.ws.data_to_send())
            self.host.connection_lost("protocol error: a text message is not UTF-8")
            return False
        self._route(payloads)
        return self.transport is not None

    def _route_messages(self, messages: list) -> None:
        """Route what the Connection delivered (fragmented messages, frames after a control
        frame): the fast way when feed-shaped, as the spans are, else the general way."""
        t0 = perf_counter()
        lens = np.fromiter(map(len, messages), np.int64, len(messages))
        ends = np.cumsum(lens)
        # (spans as if packed one after another: the span lane copies them into its scratch)
        batch, _ = self.router.route_arena(self.arr, ends - lens, ends, messages)
        if batch is None:
            self._route(messages)
            return
        self.c.messages += len(messages)
        messages.clear()
        self._account(batch, t0)

    def _route(self, messages: list) -> None:
        """The general way: Router.route (the reference, numpy for large batches)."""
        t0 = perf_counter()
        batch = self.router.route(messages)
        self.c.messages += len(messages)
        messages.clear()  # the views into the arena must not outlive this batch
        self._account(batch, t0)

    def _account(self, batch, t0: float) -> None:
        """Write a routed batch and count it; hand its statuses to the host."""
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
            self.host.on_statuses(batch.statuses)

    def _write(self, submit, runs: list, counts: list[int], used, t0: float) -> None:
        """Hand routed runs to the writer (`submit`: its method for this kind of batch), timing
        route (since t0) and write; before the batch's trades are added to the routed count."""
        t1 = perf_counter()
        if not self.c.routed:
            self.cpu_first = time.process_time()
            self.t_first = t1
        stage = self.stage
        stage.route += t1 - t0
        if self.gap_pending:  # (after a reconnect, with --gap-records: the gap record first)
            self.host.write_gap()
        if self.sample_lag:  # (with --metrics: the feed lag, sampled once per batch)
            self._sample_lag(runs, used)
        submit(runs, counts, used)
        # (process_time is a slow syscall on some VMs: sampled here per batch only as wall
        # time; the host takes the CPU end of the span once a second and at the end)
        self.t_last = t2 = perf_counter()
        stage.write += t2 - t1

    def _upgrade(self) -> bool:
        """Parse the server's answer to the upgrade request; True once upgraded (the arena then
        starts after the answer)."""
        try:
            n = self.feed.upgrade(self.view[: self.end])
        except InvalidHandshake as exc:
            status = getattr(exc, "status", None)
            if status in (401, 403):
                log.error("the server refused the websocket upgrade: %s", exc)
            self.host.connection_lost(f"websocket upgrade failed: {exc}")
            return False
        if n == 0:
            if self.end >= self.room:
                self.host.connection_lost("websocket upgrade response too large")
            return False
        self.upgraded = True
        self.pos = n
        return True

    def _compact(self) -> None:
        # Views into the arena were dropped in _route; moving the tail is safe now.
        pos, end = self.pos, self.end
        if pos == end:
            self.pos = self.end = 0
        elif self.room - end < (256 << 10):
            tail = end - pos
            self.arena[:tail] = self.view[pos:end].tobytes()
            self.pos, self.end = 0, tail

    def _sample_lag(self, runs: list, used) -> None:
        """Keep the tail of the batch's last run (`used` None: every run that is not empty)."""
        if used is None:
            used = [i for i, run in enumerate(runs) if run is not None and len(run)]
        if len(used):
            self.lag_tail = bytes(memoryview(runs[used[-1]])[-LAG_TAIL:])

    def newest_trade_ms(self) -> int | None:
        """The exchange time ("t", Unix ms) of the last record of the last batch written, if
        sampled (sample_lag) and found; read at scrape time, off the hot path."""
        tail = self.lag_tail
        if tail is None:
            return None
        at = tail.rfind(b'"t":')
        if at < 0:
            return None
        digits = tail[at + 4 : at + 24].lstrip(b" ")
        n = 0
        while n < len(digits) and 48 <= digits[n] <= 57:
            n += 1
        return int(digits[:n]) if n else None

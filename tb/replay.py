"""`tb replay`: a websocket server that speaks the feed's handshake and serves a capture.

Theory of operation. At start-up every message of the capture (or of a `tb gen` feed made in
memory) is encoded once into ONE bytes buffer of unmasked TEXT frames; ``_Stream.ends[k]`` is
the offset just past frame k and ``_Stream.trades[k]`` the trades in frames 0..k. Each client
then gets its own thread running a small loop over a nonblocking socket:

    upgrade -> greeting -> wait auth -> auth_success -> wait subscribe -> one ack per topic
            -> stream the buffer (`repeat` times) -> idle (pings/close answered) until it leaves

Streaming is plain ``send(memoryview slice)`` of up to ``CHUNK`` bytes, cut at frame
boundaries, so the per-byte cost is the kernel's copy. Control bytes (pongs, acks of a later
subscribe, our close) go out only at a frame boundary: when one is queued the current slice is
shortened to the end of the frame in flight. ``--rate`` paces by trades: about every
millisecond the loop sends the frames whose cumulative trade count is due by then.

Client input is handled by tb.ws (frames) and here (the JSON actions). Anything unexpected is
logged as one line naming the peer and ends that connection with a close frame (1002 for a
websocket protocol error, 1008 for a bad or unknown action); the server keeps serving others.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import selectors
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from tb.capture import CaptureError, read_capture
from tb.certs import CertError, self_signed_context, server_context
from tb.cli import positive_float, positive_int
from tb.ws import (
    Connection,
    InvalidHandshake,
    Opcode,
    ProtocolError,
    State,
    encode_frame,
    parse_server_request,
    reject_response,
    server_response,
)

log = logging.getLogger("tb.replay")

CHUNK = 1 << 20  # bytes per send() while streaming unpaced
PACE_SLICE_S = 0.001
# Transmit timestamps (linux/net_tstamp.h): the kernel's software timestamp of each send's last
# byte as it goes to the device, keyed by that byte's offset in the stream; on loopback that is
# the moment the bytes are handed to the client's socket.
SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)
_TX_STAMP_FLAGS = (1 << 1) | (1 << 4) | (1 << 7) | (1 << 11)  # TX_SOFTWARE, SOFTWARE, ID, TSONLY
_SO_EE_ORIGIN_TIMESTAMPING = 4
AUTH_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 5.0  # how long to wait for the peer's close reply
RECV_SIZE = 65536
TLS_TIMEOUT_S = 30.0  # wss: handshake and blocking-send timeout

GREETING = b'[{"ev":"status","status":"connected","message":"Connected Successfully"}]'
AUTH_SUCCESS = b'[{"ev":"status","status":"auth_success","message":"authenticated"}]'
AUTH_FAILED = b'[{"ev":"status","status":"auth_failed","message":"authentication failed"}]'
AUTH_TIMEOUT = b'[{"ev":"status","status":"auth_timeout","message":"no valid auth received"}]'
MAX_CONNECTIONS = (
    b'[{"ev":"status","status":"max_connections","message":'
    b'"Maximum number of websocket connections exceeded."}]'
)


def _status(status: str, message: str) -> bytes:
    return json.dumps(
        [{"ev": "status", "status": status, "message": message}], separators=(",", ":")
    ).encode()


#: The line `tb replay` prints once it listens; group 1 is the URL (tb demo, tb profile, tests).
LISTENING = re.compile(r"listening on (wss?://\S+)")
STREAMING_TO = re.compile(r"streaming to (\S+)")  # printed when a client starts getting trades


def count_trades(payload: bytes) -> int:
    """Non-status events in one message. Counts ``"ev"`` keys; decodes only if a status is there."""
    n = payload.count(b'"ev"')
    if n and b'"status"' in payload:
        try:
            value = json.loads(payload)
        except ValueError:
            return n
        if isinstance(value, dict):
            value = [value]
        if isinstance(value, list):
            return sum(1 for v in value if isinstance(v, dict) and v.get("ev") != "status")
    return n


class _Stream:
    """Every message pre-encoded as server TEXT frames in one buffer, with frame/trade offsets."""

    def __init__(self, payloads: Iterable[bytes]) -> None:
        # Appended frame by frame (amortized growth) rather than joined from a list, so the
        # peak is about one copy of the stream even for multi-GB captures.
        buffer = bytearray()
        ends: list[int] = []
        trades: list[int] = []
        total = 0
        for payload in payloads:
            buffer += encode_frame(Opcode.TEXT, payload, mask=False)
            total += count_trades(payload)
            ends.append(len(buffer))
            trades.append(total)
        self.buffer = buffer  # never resized again: the memoryview below pins it
        self.view = memoryview(buffer)
        self.ends = np.array(ends, dtype=np.int64)
        self.trades = np.array(trades, dtype=np.int64)
        self.messages = len(ends)
        self.total_trades = total

    def boundary_at_or_after(self, pos: int) -> int:
        """Index of the frame that ends at or after byte ``pos``."""
        return int(np.searchsorted(self.ends, pos, side="left"))


@dataclass(slots=True)
class _Tally:
    trades: int = 0
    messages: int = 0
    bytes: int = 0


class ReplayServer:
    """Serve ``payloads`` (websocket message payloads) to every client that connects.

    Args:
        payloads: the messages, in order (encoded once, at construction).
        host, port: where to listen; port 0 picks a free one (see ``.port`` after start()).
        rate: trades per second per connection, or None for as fast as the socket takes them.
        key: if set, the API key a client must send; None accepts any key.
        close_after: close with 1000 "replay finished" once everything was sent.
        repeat: serve the capture this many times back to back on each connection.
        max_connections: refuse (status max_connections, close 1008) beyond this many at once.
        ssl_context: serve wss:// (each connection's handshake runs in its own thread).
        send_log: if a list, (first_message, last_message, ns, kernel) is appended each time a
            slice of frames has gone to the kernel (tb profile's latency measurement): ns is the
            CLOCK_MONOTONIC time the kernel sent the slice's last byte on its way (its transmit
            timestamp; kernel True), or where there is none (TLS, an older kernel) the time just
            before the send that completed the slice (kernel False).
        on_streaming: called with the client's address (from the connection's thread) when a
            client has subscribed and its trades start (tb replay prints "streaming to ADDR").

    ``connections`` counts accepted connections, ``finished`` those whose thread has ended,
    ``completed`` those that received the whole stream, ``trades_sent`` trades sent in total.
    """

    def __init__(
        self,
        payloads: Iterable[bytes],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rate: float | None = None,
        key: str | None = None,
        close_after: bool = False,
        repeat: int = 1,
        max_connections: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        send_log: list | None = None,
        on_streaming: Callable[[str], None] | None = None,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        if repeat < 1:
            raise ValueError("repeat must be at least 1")
        self.stream = _Stream(payloads)
        self.host = host
        self.port = port
        self.rate = rate
        self.key = key
        self.close_after = close_after
        self.repeat = repeat
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self.send_log = send_log
        self.on_streaming = on_streaming
        self.connections = 0
        self.finished = 0
        self.completed = 0
        self.trades_sent = 0
        self._lock = threading.Lock()
        self._active = 0
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self.changed = threading.Condition(self._lock)  # notified when a connection ends

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.ssl_context else 'ws'}://{host}:{self.port}"

    def start(self) -> None:
        """Bind, listen and accept in a background thread. Raises OSError if it cannot bind."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.settimeout(0.1)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._accept_thread = threading.Thread(target=self._accept_loop, name="replay-accept")
        self._accept_thread.daemon = True
        self._accept_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, drop every connection, and wait for the threads (up to ``timeout``)."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        deadline = time.monotonic() + timeout
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def wait_finished(self, count: int, timeout: float | None = None) -> bool:
        """Block until ``count`` connections have ended; False on timeout."""
        with self.changed:
            return self.changed.wait_for(lambda: self.finished >= count, timeout)

    def __enter__(self) -> ReplayServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stopping.is_set():
                    log.error("accept failed: %s", exc)
                    time.sleep(0.1)
                continue
            name = _peer_name(peer)
            with self._lock:
                self.connections += 1
                over = self.max_connections is not None and self._active >= self.max_connections
                self._active += 1
            session = _Session(self, sock, name, refuse=over)
            t = threading.Thread(target=session.run, name=f"replay {name}", daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
            t.start()

    def _session_ended(self, completed: bool) -> None:
        with self.changed:
            self._active -= 1
            self.finished += 1
            self.completed += completed
            self.changed.notify_all()

    def _count(self, trades: int) -> None:
        with self._lock:
            self.trades_sent += trades


def _peer_name(peer: tuple) -> str:
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Session phases, in order.
HANDSHAKE, AUTH, SUBSCRIBE, STREAMING, IDLE, CLOSING = range(6)


class _ClientError(Exception):
    """The client broke the protocol before there was a websocket to close."""


class _Session:
    """One client connection: handshake, feed protocol, streaming. Runs in its own thread."""

    def __init__(self, server: ReplayServer, sock: socket.socket, peer: str, refuse: bool) -> None:
        self.server = server
        self.stream = server.stream
        self.sock = sock
        self.peer = peer
        self.refuse = refuse
        self.conn = Connection(client=False)
        self.phase = HANDSHAKE
        self.inbuf = bytearray()
        self.ctrl = bytearray()  # control bytes to send at the next frame boundary
        self.pos = 0  # byte position in the stream buffer (current pass)
        self.chunk_end = 0  # end of the slice being sent; always a frame boundary
        self.chunk_frame = -1  # index of the frame ending at chunk_end
        self.send_ns = 0  # monotonic ns just before the latest send of stream bytes
        self.tx_stamps: dict[int, int] | None = None  # last byte's offset -> monotonic ns sent
        self.tx_sent = 0  # bytes sent on this socket (the offsets tx_stamps are keyed by)
        self.realtime_offset = 0  # CLOCK_REALTIME - CLOCK_MONOTONIC, in ns
        self.frames_done = 0  # frames fully sent in the current pass
        self.pass_no = 0
        self.tally = _Tally()
        self.started = 0.0
        self.deadline: float | None = None  # auth timeout / close timeout
        self.completed = False
        self.peer_gone = False
        self.drop_after_flush = False  # a failed connection: send the close frame, then drop

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except _ClientError as exc:
            log.warning("%s: %s; dropping", self.peer, exc)
        except (ConnectionError, TimeoutError) as exc:
            log.info("%s: connection lost: %s", self.peer, exc.strerror or exc)
        except OSError as exc:
            log.warning("%s: socket error: %s", self.peer, exc)
        except Exception:  # a bug here must not take the server down
            log.exception("%s: internal error", self.peer)
        finally:
            if self.phase >= STREAMING and not self.completed:
                log.info(
                    "%s left after %d of %d trades (%d messages, %d bytes)",
                    self.peer,
                    self.tally.trades,
                    self.stream.total_trades * self.server.repeat,
                    self.tally.messages,
                    self.tally.bytes,
                )
            self.sock.close()
            self.server._session_ended(self.completed)

    def _run(self) -> None:
        sock = self.sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.server.ssl_context is None:
            sock.setblocking(False)
            if self.server.send_log is not None:
                self._start_tx_stamps()
        else:
            # wss: blocking sends with a timeout. A nonblocking SSL write that stalls must be
            # retried with the same bytes, and _shrink_chunk may shorten the slice in flight.
            sock.settimeout(TLS_TIMEOUT_S)
            sock = self.sock = self.server.ssl_context.wrap_socket(sock, server_side=True)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        mask = selectors.EVENT_READ
        stopping = self.server._stopping
        self.deadline = time.monotonic() + AUTH_TIMEOUT_S
        try:
            while not stopping.is_set():
                if self.tx_stamps is not None:
                    self._collect_tx_stamps()  # (a full error queue would wake select at once)
                wait = self._next_wait()
                want = selectors.EVENT_READ | (selectors.EVENT_WRITE if wait == 0.0 else 0)
                if want != mask:
                    sel.modify(sock, want)
                    mask = want
                events = sel.select(wait if wait else 0.1)
                for _, ev in events:
                    if ev & selectors.EVENT_READ and not self._on_readable():
                        return
                if mask & selectors.EVENT_WRITE:
                    self._on_writable()
                if self._finished():
                    return
                self._check_deadline()
        finally:
            sel.close()

    def _next_wait(self) -> float | None:
        """0.0 if there is something to send now, seconds until paced data is due, else None."""
        if self.ctrl or self.pos < self.chunk_end:
            return 0.0
        if self.phase != STREAMING:
            return None
        if self.server.rate is None:
            return 0.0
        due = self._trades_due()
        if self.stream.trades[self.frames_done] <= due:
            return 0.0
        return PACE_SLICE_S

    def _finished(self) -> bool:
        if self.peer_gone:
            return True
        if self.drop_after_flush and not self.ctrl:
            return True
        # After a close (ours or theirs) has been flushed: done once the handshake completes.
        if self.phase == CLOSING and not self.ctrl and self.conn.state is State.CLOSED:
            return True
        return False

    def _check_deadline(self) -> None:
        if self.deadline is None or time.monotonic() < self.deadline:
            return
        if self.phase in (HANDSHAKE, AUTH):
            self.deadline = None
            if self.phase == HANDSHAKE:
                raise _ClientError(f"no upgrade request in {AUTH_TIMEOUT_S:.0f} s")
            self._send_text(AUTH_TIMEOUT)
            self._close(1008, "auth timeout")
            log.warning("%s: no auth message in %.0f s; closing", self.peer, AUTH_TIMEOUT_S)
        elif self.phase == CLOSING:
            log.info("%s: no close reply in %.0f s; dropping", self.peer, CLOSE_TIMEOUT_S)
            self.peer_gone = True

    # -- reading -------------------------------------------------------------------------

    def _on_readable(self) -> bool:
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return True
        if not data:
            if self.phase != CLOSING:
                log.info("%s: disconnected", self.peer)
            self.peer_gone = True
            return False
        if self.drop_after_flush or self.conn.state is State.CLOSED:
            return True  # nothing more to read from a failed or closed connection
        self.inbuf += data
        if self.phase == HANDSHAKE and not self._handshake():
            return True
        if self.peer_gone:
            return False
        try:
            # A copy: client input is a few small frames, and a view would pin inbuf's size.
            consumed = self.conn.receive(memoryview(bytes(self.inbuf)))
        except ProtocolError as exc:
            log.warning("%s: websocket error: %s; closing with %d", self.peer, exc, exc.close_code)
            self.inbuf.clear()
            self.ctrl += self.conn.data_to_send()
            self._shrink_chunk()
            self.phase = CLOSING
            self.drop_after_flush = True
            return True
        messages = [bytes(m) for m in self.conn.messages]
        self.conn.messages.clear()
        del self.inbuf[:consumed]
        for message in messages:
            if self.phase == CLOSING:
                break
            self._on_message(message)
        out = self.conn.data_to_send()
        if out:
            self.ctrl += out
            self._shrink_chunk()
        if self.conn.state is State.CLOSED and self.phase != CLOSING:
            log.info("%s: client closed (%s)", self.peer, self.conn.close_code)
            self.phase = CLOSING
            self.deadline = time.monotonic() + CLOSE_TIMEOUT_S
        return True

    def _handshake(self) -> bool:
        try:
            consumed, request = parse_server_request(self.inbuf)
        except InvalidHandshake as exc:
            status = exc.status or 400
            log.warning("%s: bad upgrade request: %s; answered %d", self.peer, exc, status)
            self.ctrl += reject_response(status, str(exc))
            self.drop_after_flush = True
            self.inbuf.clear()
            return False
        if request is None:
            return False
        del self.inbuf[:consumed]
        self.ctrl += server_response(request)
        if self.refuse:
            self._send_text(MAX_CONNECTIONS)
            self._close(1008, "max connections")
            log.warning(
                "%s: refused: already %d connections", self.peer, self.server.max_connections
            )
            return True
        log.info("%s: connected (GET %s)", self.peer, request.path)
        self._send_text(GREETING)
        self.phase = AUTH
        return True

    def _on_message(self, message: bytes) -> None:
        try:
            value = json.loads(message)
        except ValueError:
            self._reject(f"message is not JSON: {message[:80]!r}")
            return
        if not isinstance(value, dict) or not isinstance(value.get("action"), str):
            self._reject(f"message has no action: {message[:80]!r}")
            return
        action, params = value["action"], value.get("params")
        if action == "auth":
            self._on_auth(params)
        elif action in ("subscribe", "unsubscribe"):
            self._on_subscribe(action, params)
        else:
            self._reject(f"unknown action {action[:40]!r}")

    def _on_auth(self, params: object) -> None:
        if self.phase != AUTH:
            self._send_text(_status("success", "already authenticated"))
            return
        key = self.server.key
        if key is not None and params != key:
            self._send_text(AUTH_FAILED)
            self._close(1008, "authentication failed")
            log.warning("%s: auth failed (wrong key)", self.peer)
            return
        self._send_text(AUTH_SUCCESS)
        self.phase = SUBSCRIBE
        self.deadline = None

    def _on_subscribe(self, action: str, params: object) -> None:
        if self.phase == AUTH:
            self._reject(f"{action} before auth")
            return
        if not isinstance(params, str) or not params.strip(","):
            self._reject(f'{action} needs params like "T.*", got {params!r:.60}')
            return
        verb = "subscribed to" if action == "subscribe" else "unsubscribed from"
        for topic in params.split(","):
            topic = topic.strip()
            if topic:
                self._send_text(_status("success", f"{verb}: {topic}"))
        if action == "subscribe" and self.phase == SUBSCRIBE:
            self._start_stream(params)

    def _reject(self, why: str) -> None:
        log.warning("%s: %s; closing with 1008", self.peer, why)
        self._close(1008, "bad message")

    # -- writing -------------------------------------------------------------------------

    def _send_text(self, payload: bytes) -> None:
        if self.conn.state is not State.OPEN:
            return  # a close frame is already queued: nothing may follow it
        self.conn.send_text(payload)
        self.ctrl += self.conn.data_to_send()
        self._shrink_chunk()

    def _close(self, code: int, reason: str) -> None:
        self.conn.send_close(code, reason)
        self.ctrl += self.conn.data_to_send()
        self._shrink_chunk()
        self.phase = CLOSING
        self.deadline = time.monotonic() + CLOSE_TIMEOUT_S

    def _shrink_chunk(self) -> None:
        """Control bytes are waiting: end the slice in flight at the end of the current frame."""
        if self.pos < self.chunk_end:
            k = self.stream.boundary_at_or_after(self.pos)
            end = int(self.stream.ends[k])
            if end < self.chunk_end:
                self.chunk_end = end
                self.chunk_frame = k
                if end == self.pos:  # the last send stopped exactly at a frame end
                    self._chunk_sent()

    def _start_stream(self, params: str) -> None:
        self.phase = STREAMING
        self.started = time.monotonic()
        log.info("%s: subscribed to %s; streaming", self.peer, params)
        if self.server.on_streaming is not None:
            self.server.on_streaming(self.peer)
        if self.stream.messages == 0:
            self._stream_done()

    def _trades_due(self) -> float:
        rate = self.server.rate
        assert rate is not None
        return rate * (time.monotonic() - self.started) - self.pass_no * self.stream.total_trades

    def _next_chunk(self) -> None:
        """Pick the next slice [pos, chunk_end) at frame boundaries (paced or not)."""
        s = self.stream
        first = self.frames_done
        if self.server.rate is None:
            last = int(np.searchsorted(s.ends, self.pos + CHUNK, side="right")) - 1
        else:
            last = int(np.searchsorted(s.trades, self._trades_due(), side="right")) - 1
            cap = int(np.searchsorted(s.ends, self.pos + CHUNK, side="right")) - 1
            last = min(last, cap)
        last = max(last, first)  # at least one frame (a frame larger than CHUNK, or paced due)
        self.chunk_frame = last
        self.chunk_end = int(s.ends[last])

    def _on_writable(self) -> None:
        while True:
            if self.pos < self.chunk_end:  # finish the slice in flight, whatever the phase
                # (the send log's time where the kernel gives no transmit timestamp: before the
                # send, as the bytes reach the client inside that call and after it this thread
                # may wait for the GIL -- a later stamp would make the client look faster)
                self.send_ns = time.monotonic_ns()
                n = self._send(self.stream.view[self.pos : self.chunk_end])
                self.pos += n
                if self.pos < self.chunk_end:
                    return  # socket full
                self._chunk_sent()
                if self.server.rate is not None and not self.ctrl:
                    return  # paced: one slice per wake-up
                continue
            if self.ctrl:  # at a frame boundary: control bytes may go
                n = self._send(self.ctrl)
                del self.ctrl[:n]
                if self.ctrl:
                    return
                continue
            if self.phase != STREAMING or self._next_wait() != 0.0:
                return
            self._next_chunk()

    def _chunk_sent(self) -> None:
        s = self.stream
        first = self.frames_done
        last = self.chunk_frame
        trades = int(s.trades[last]) - (int(s.trades[first - 1]) if first else 0)
        self.tally.trades += trades
        self.tally.messages += last + 1 - first
        self.tally.bytes += int(s.ends[last]) - (int(s.ends[first - 1]) if first else 0)
        self.server._count(trades)
        if self.server.send_log is not None:
            t = None
            if self.tx_stamps is not None:
                self._collect_tx_stamps()
                t = self.tx_stamps.pop((self.tx_sent - 1) & 0xFFFFFFFF, None)
            self.server.send_log.append((first, last, t or self.send_ns, t is not None))
        self.frames_done = last + 1
        if self.frames_done == s.messages and self.phase == STREAMING:
            self.pass_no += 1
            if self.pass_no < self.server.repeat:
                self.pos = self.chunk_end = self.frames_done = 0
                self.chunk_frame = -1
            else:
                self._stream_done()

    def _stream_done(self) -> None:
        elapsed = time.monotonic() - self.started
        log.info(
            "sent %d trades in %d messages (%d bytes) in %.3f s to %s",
            self.tally.trades,
            self.tally.messages,
            self.tally.bytes,
            elapsed,
            self.peer,
        )
        self.completed = True
        self.phase = IDLE
        if self.server.close_after:
            self._close(1000, "replay finished")

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            return 0
        self.tx_sent += n
        return n

    def _start_tx_stamps(self) -> None:
        """Ask for the kernel's transmit timestamps (before the first byte is sent, so their keys
        are offsets from the start of the stream); the send log uses them when they come."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, _TX_STAMP_FLAGS)
        except OSError:
            return  # the log keeps the time taken before each send
        self.realtime_offset = time.clock_gettime_ns(time.CLOCK_REALTIME) - time.monotonic_ns()
        self.tx_stamps = {}

    def _collect_tx_stamps(self) -> None:
        """Move the transmit timestamps waiting in the socket's error queue into tx_stamps."""
        stamps = self.tx_stamps
        assert stamps is not None
        while True:
            try:
                _, ancillary, _, _ = self.sock.recvmsg(
                    0, 256, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT
                )
            except OSError:  # (BlockingIOError: none left)
                return
            t = key = None
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and len(data) >= 16:
                    sec, nsec = struct.unpack_from("qq", data)
                    t = sec * 1_000_000_000 + nsec - self.realtime_offset
                elif len(data) >= 16 and data[4] == _SO_EE_ORIGIN_TIMESTAMPING:
                    key = struct.unpack_from("I", data, 12)[0]  # sock_extended_err.ee_data
            if t is not None and key is not None:
                if len(stamps) > 4096:  # (stamps of control bytes nobody asked for)
                    stamps.clear()
                stamps[key] = t


# --- CLI --------------------------------------------------------------------------------------


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port is not a number: {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {text!r}")
    return host, number


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `tb replay` on a subparsers object."""
    from tb.gen import PROFILES

    p = subparsers.add_parser(
        "replay",
        help="serve a capture (or a synthetic feed) over websocket, like the real feed",
        description=(
            "Serve a capture file over ws:// with the feed's handshake: greeting, "
            '{"action":"auth"} -> auth_success (or auth_failed with --key), '
            '{"action":"subscribe"} -> one success per topic, then every message of the '
            "capture, as fast as the client reads (or --rate). Each connection gets the whole "
            "capture from the start; the connection then stays open until the client leaves. "
            "Without FILE a synthetic feed is generated in memory (tb gen). Prints "
            "'listening on ws://HOST:PORT' when ready, and 'streaming to ADDR' when the first "
            "client has subscribed and its trades start (both on stdout, flushed)."
        ),
        epilog=(
            "exit codes: 0 stopped (SIGINT/SIGTERM, or --once after the client), "
            "1 cannot listen, 2 bad command line or unreadable capture"
        ),
    )
    p.add_argument(
        "file", nargs="?", metavar="FILE", help="capture to serve (TBCAP1 or JSON lines)"
    )
    p.add_argument(
        "--listen",
        type=_listen_address,
        default=("127.0.0.1", 8765),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8765; port 0 picks a free one)",
    )
    p.add_argument(
        "--rate",
        type=positive_float,
        metavar="TRADES_PER_S",
        help="pace each connection to this many trades per second (default: unpaced)",
    )
    p.add_argument("--key", help="accept only this API key (default: any key)")
    p.add_argument(
        "--close-after",
        action="store_true",
        help='close with 1000 "replay finished" once the whole capture was sent',
    )
    p.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        metavar="N",
        help="send the capture N times on each connection (default 1)",
    )
    p.add_argument(
        "--max-connections",
        type=positive_int,
        metavar="N",
        help="refuse clients beyond N at once with a max_connections status",
    )
    p.add_argument("--once", action="store_true", help="exit after the first client is done")
    p.add_argument("--tls-cert", metavar="FILE", help="serve wss:// with this PEM certificate")
    p.add_argument("--tls-key", metavar="FILE", help="its PEM private key (default: in --tls-cert)")
    p.add_argument(
        "--tls-self-signed",
        action="store_true",
        help="serve wss:// with a throwaway self-signed certificate for localhost/127.0.0.1 "
        "(its path is printed: give it to tb run --cafile)",
    )
    p.add_argument(
        "--tls-ktls",
        action="store_true",
        help="ask OpenSSL for kernel TLS on sends (SSL_OP_ENABLE_KTLS; needs a kTLS kernel)",
    )
    p.add_argument(
        "--gen-profile",
        choices=PROFILES,
        default="burst",
        help="without FILE: synthetic feed profile (default burst)",
    )
    p.add_argument(
        "--gen-trades",
        type=positive_int,
        default=1_000_000,
        metavar="N",
        help="without FILE: number of synthetic trades (default 1000000)",
    )
    p.set_defaults(func=main)


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """--tls-cert/--tls-key or --tls-self-signed -> a server context (None: plain ws://)."""
    if args.tls_cert and args.tls_self_signed:
        raise CertError("give --tls-cert or --tls-self-signed, not both")
    if args.tls_key and not args.tls_cert:
        raise CertError("--tls-key needs --tls-cert")
    if args.tls_cert:
        return server_context(args.tls_cert, args.tls_key, ktls=args.tls_ktls)
    if args.tls_self_signed:
        import tempfile

        cert = os.path.join(tempfile.mkdtemp(prefix="tb-replay-"), "cert.pem")
        ctx, how = self_signed_context(cert, ktls=args.tls_ktls)
        log.info("self-signed certificate made with %s: tb run --cafile %s", how, cert)
        return ctx
    if args.tls_ktls:
        raise CertError("--tls-ktls needs --tls-cert or --tls-self-signed")
    return None


def _print_first_streaming() -> Callable[[str], None]:
    """on_streaming for the CLI: "streaming to ADDR" on stdout for the first client only (one
    line: a parent that reads only the listening line never fills the pipe and blocks us)."""
    done = threading.Event()

    def on_streaming(peer: str) -> None:
        if not done.is_set():
            done.set()
            try:
                print(f"streaming to {peer}", flush=True)
            except (OSError, ValueError):  # stdout closed by whoever started us
                pass

    return on_streaming


def main(args: argparse.Namespace) -> int:
    """`tb replay`: load, listen, print the address, serve until stopped."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    host, port = args.listen
    try:
        if args.file is not None:
            payloads: Iterable[bytes] = read_capture(args.file)
            source = args.file
        else:
            from tb.gen import generate

            payloads = generate(profile=args.gen_profile, trades=args.gen_trades)
            source = f"tb gen --profile {args.gen_profile} --trades {args.gen_trades}"
        server = ReplayServer(
            payloads,
            host,
            port,
            rate=args.rate,
            key=args.key,
            close_after=args.close_after,
            repeat=args.repeat,
            max_connections=args.max_connections,
            ssl_context=_tls_context(args),
            on_streaming=_print_first_streaming(),
        )
    except CertError as exc:
        print(f"tb replay: {exc}", file=sys.stderr)
        return 2
    except CaptureError as exc:
        print(f"tb replay: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tb replay: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        server.start()
    except OSError as exc:
        print(f"tb replay: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stream = server.stream
    log.info(
        "serving %s: %d trades in %d messages (%d bytes of frames)",
        source,
        stream.total_trades,
        stream.messages,
        len(stream.buffer),
    )
    print(f"listening on {server.url}", flush=True)  # LISTENING parses it

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop.is_set():
            if args.once and server.wait_finished(1, timeout=0.2):
                break
            stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
    log.info("stopped: %d connections, %d trades sent", server.connections, server.trades_sent)
    return 0

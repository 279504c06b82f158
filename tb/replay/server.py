"""`tb replay`'s server: a listening socket, one thread per client, and each client's loop.

Theory of operation. `ReplayServer` accepts in a background thread and gives each client its
own thread running `_ClientHandler`, a small loop over a nonblocking socket:

    upgrade (tb.ws) -> the feed protocol (tb.replay.protocol: greeting, auth, subscribe)
            -> stream the frames (tb.replay.stream, `repeat` times) -> idle until it leaves

The handler owns the I/O and the clock; the feed protocol's decisions (what to answer, when to
stream, when to close) come from `ServerSession`, which it drives. Streaming is plain
``send(memoryview slice)`` of up to ``CHUNK`` bytes, cut at frame boundaries, so the per-byte
cost is the kernel's copy. Control bytes (pongs, statuses, our close) go out only at a frame
boundary: when one is queued the current slice is shortened to the end of the frame in flight.
``rate`` paces by trades: about every millisecond the loop sends the frames whose cumulative
trade count is due by then. wss:// uses blocking sends with a timeout: a nonblocking SSL write
that stalls must be retried with the same bytes, and a queued control message may shorten the
slice in flight.

Anything unexpected from a client is logged as one line naming the peer and ends that
connection with a close frame (1002 for a websocket protocol error, 1008 for a bad or unknown
action); the server keeps serving others. With a send log (tb profile), each slice is logged
with the kernel's transmit timestamp of its last byte (tb.replay.txstamps) where there is one.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from tb.replay.protocol import (
    AUTH_TIMEOUT_S,
    Phase,
    Reply,
    SendClose,
    SendText,
    ServerSession,
    StartStream,
)
from tb.replay.stream import FrameStream
from tb.replay.txstamps import TxStamps
from tb.ws import (
    Connection,
    InvalidHandshake,
    ProtocolError,
    State,
    parse_server_request,
    reject_response,
    server_response,
)

__all__ = ["ReplayServer", "CHUNK"]

log = logging.getLogger("tb.replay")

CHUNK = 1 << 20  # bytes per send() while streaming unpaced
PACE_SLICE_S = 0.001
CLOSE_TIMEOUT_S = 5.0  # how long to wait for the peer's close reply
RECV_SIZE = 65536
TLS_TIMEOUT_S = 30.0  # wss: handshake and blocking-send timeout


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
        self.stream = FrameStream(payloads)
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
            handler = _ClientHandler(self, sock, name, refuse=over)
            t = threading.Thread(target=handler.run, name=f"replay {name}", daemon=True)
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


class _ClientError(Exception):
    """The client broke the protocol before there was a websocket to close."""


class _ClientHandler:
    """One client connection's loop, in its own thread: the socket, the websocket, the clock,
    and streaming; the feed protocol's decisions come from its ServerSession."""

    def __init__(self, server: ReplayServer, sock: socket.socket, peer: str, refuse: bool) -> None:
        self.server = server
        self.stream = server.stream
        self.sock = sock
        self.peer = peer
        self.refuse = refuse
        self.conn = Connection(client=False)
        self.session = ServerSession(server.key, close_after=server.close_after, peer=peer)
        self.inbuf = bytearray()
        self.ctrl = bytearray()  # control bytes to send at the next frame boundary
        self.pos = 0  # byte position in the stream buffer (current pass)
        self.chunk_end = 0  # end of the slice being sent; always a frame boundary
        self.chunk_frame = -1  # index of the frame ending at chunk_end
        self.send_ns = 0  # monotonic ns just before the latest send of stream bytes
        self.tx: TxStamps | None = None  # the kernel's transmit timestamps (send log, plain TCP)
        self.frames_done = 0  # frames fully sent in the current pass
        self.pass_no = 0
        self.tally = _Tally()
        self.started = 0.0
        self.deadline: float | None = None  # auth timeout / close timeout
        self.completed = False
        self.peer_gone = False
        self.drop_after_flush = False  # a failed connection: send the close frame, then drop

    @property
    def phase(self) -> Phase:
        return self.session.phase

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
            if self.session.streamed and not self.completed:
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
                self.tx = TxStamps.start(sock)  # before the first byte is sent
        else:
            sock.settimeout(TLS_TIMEOUT_S)  # (blocking sends: see the module docstring)
            sock = self.sock = self.server.ssl_context.wrap_socket(sock, server_side=True)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        mask = selectors.EVENT_READ
        stopping = self.server._stopping
        self.deadline = time.monotonic() + AUTH_TIMEOUT_S
        try:
            while not stopping.is_set():
                if self.tx is not None:
                    self.tx.collect()  # (a full error queue would wake select at once)
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
        if self.phase is not Phase.STREAMING:
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
        if self.phase is Phase.CLOSING and not self.ctrl and self.conn.state is State.CLOSED:
            return True
        return False

    def _check_deadline(self) -> None:
        if self.deadline is None or time.monotonic() < self.deadline:
            return
        if self.phase is Phase.HANDSHAKE:
            self.deadline = None
            raise _ClientError(f"no upgrade request in {AUTH_TIMEOUT_S:.0f} s")
        if self.phase is Phase.AUTH:
            self._carry_out(self.session.auth_timed_out())
        elif self.phase is Phase.CLOSING:
            log.info("%s: no close reply in %.0f s; dropping", self.peer, CLOSE_TIMEOUT_S)
            self.peer_gone = True

    def _carry_out(self, replies: list[Reply]) -> None:
        """Do what the feed protocol decided, in order; then set the deadline its phase has."""
        for reply in replies:
            if isinstance(reply, SendText):
                self._send_text(reply.payload)
            elif isinstance(reply, SendClose):
                self._close(reply.code, reply.reason)
            elif isinstance(reply, StartStream):
                self._start_stream(reply.topics)
        if self.phase not in (Phase.HANDSHAKE, Phase.AUTH, Phase.CLOSING):
            self.deadline = None  # authenticated: no deadline until a close

    # -- reading -------------------------------------------------------------------------

    def _on_readable(self) -> bool:
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return True
        if not data:
            if self.phase is not Phase.CLOSING:
                log.info("%s: disconnected", self.peer)
            self.peer_gone = True
            return False
        if self.drop_after_flush or self.conn.state is State.CLOSED:
            return True  # nothing more to read from a failed or closed connection
        self.inbuf += data
        if self.phase is Phase.HANDSHAKE and not self._handshake():
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
            self.session.closing()
            self.drop_after_flush = True
            return True
        messages = [bytes(m) for m in self.conn.messages]
        self.conn.messages.clear()
        del self.inbuf[:consumed]
        for message in messages:
            if self.phase is Phase.CLOSING:
                break
            self._carry_out(self.session.receive(message))
        out = self.conn.data_to_send()
        if out:
            self.ctrl += out
            self._shrink_chunk()
        if self.conn.state is State.CLOSED and self.phase is not Phase.CLOSING:
            log.info("%s: client closed (%s)", self.peer, self.conn.close_code)
            self.session.closing()
            self.deadline = time.monotonic() + CLOSE_TIMEOUT_S
        return True

    def _handshake(self) -> bool:
        """The websocket upgrade: True once it is answered and the feed protocol has begun."""
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
            self._carry_out(self.session.refuse(self.server.max_connections or 0))
        else:
            self._carry_out(self.session.upgraded(request.path))
        return True

    # -- writing -------------------------------------------------------------------------

    def _send_text(self, payload: bytes) -> None:
        if self.conn.state is not State.OPEN:
            return  # a close frame is already queued: nothing may follow it
        self.conn.send_text(payload)
        self.ctrl += self.conn.data_to_send()
        self._shrink_chunk()

    def _close(self, code: int, reason: str) -> None:
        """Queue our close frame (the feed protocol is in CLOSING) and wait for the reply."""
        self.conn.send_close(code, reason)
        self.ctrl += self.conn.data_to_send()
        self._shrink_chunk()
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

    def _start_stream(self, topics: str) -> None:
        self.started = time.monotonic()
        log.info("%s: subscribed to %s; streaming", self.peer, topics)
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
            if self.phase is not Phase.STREAMING or self._next_wait() != 0.0:
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
            t = self.tx.last_sent() if self.tx is not None else None
            self.server.send_log.append((first, last, t or self.send_ns, t is not None))
        self.frames_done = last + 1
        if self.frames_done == s.messages and self.phase is Phase.STREAMING:
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
        self._carry_out(self.session.stream_sent())

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            return 0
        if self.tx is not None:
            self.tx.sent += n
        return n

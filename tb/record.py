"""`tb record`: save a live feed to a capture file that `tb replay` can serve.

It speaks to the feed through the same FeedClient as `tb run` (upgrade, auth, subscribe, pings
answered), reading one connection (select, then a non-blocking receive), and writes each
message that carries events, byte for byte, to a TBCAP1 capture; pure status messages (the
handshake's, and mid-stream ones) are logged, not recorded, since the replay server makes its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import time

from tb.cli import add_logging_arguments, count, seconds
from tb.exitcode import ExitCode
from tb.feed import AuthFailed, FeedError
from tb.feed.client import FeedClient
from tb.logs import write_line
from tb.route import Router
from tb.signals import STOP_SIGNALS
from tb.transport import TransportError
from tb.ws import InvalidHandshake, ProtocolError, State

__all__ = ["add_parser", "main"]

log = logging.getLogger("tb.record")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "record",
        help="record a feed to a capture file for tb replay",
        description="Connect like tb run, and write every message that carries events to OUT "
        "(TBCAP1 capture). Stops after --duration/--messages/--trades, at SIGINT/SIGTERM, or when "
        "the server closes.",
    )
    p.add_argument("url", help="feed URL, ws://... or wss://...")
    p.add_argument("out", help="capture file to write")
    p.add_argument("--key", help="API key (else $POLYGON_API_KEY, else $MASSIVE_API_KEY)")
    p.add_argument("--key-file", help="read the API key from this file")
    p.add_argument("--subscribe", default="T.*", help="topics (default T.*)")
    p.add_argument("--duration", type=seconds, default=0.0, help="stop after SECONDS")
    p.add_argument("--messages", type=count, default=0, help="stop after N recorded messages")
    p.add_argument("--trades", type=count, default=0, help="stop after N recorded events")
    p.add_argument("--cafile", help="CA bundle for wss://")
    p.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")
    add_logging_arguments(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from tb.capture import CaptureWriter
    from tb.cli import CLIError, _resolve_key, check_cafile
    from tb.transport import TLSVerifyError, TransportError, connect, parse_url

    try:
        url = parse_url(args.url)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    check_cafile(args.cafile)
    key, source = _resolve_key(args)
    folder = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out) or not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write {args.out}: not a writable file path")
    stop: list[int] = []
    for s in STOP_SIGNALS:
        signal.signal(s, lambda *_: stop.append(1))
    try:
        transport = connect(url, cafile=args.cafile, insecure=args.insecure)
    except TLSVerifyError as exc:
        log.error("%s", exc)
        return ExitCode.TLS
    except TransportError as exc:
        log.error("%s", exc)
        return ExitCode.CONNECT
    try:
        cap = CaptureWriter(args.out)
    except OSError as exc:
        transport.close()
        raise CLIError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    recorder = Recorder(args, FeedClient(url.host_header, url.path, key, source, args.subscribe))
    with cap:
        code = recorder.run(transport, cap, stop)
    transport.close()
    write_line(
        f"tb record: {recorder.recorded} messages, {recorder.events} events in "
        f"{time.monotonic() - recorder.t0:.1f} s -> {args.out}"
    )
    return code


class Recorder:
    """Reads one connection through a FeedClient and writes the messages that carry events."""

    def __init__(self, args: argparse.Namespace, feed: FeedClient) -> None:
        self.args = args
        self.feed = feed
        self.router = Router(1)  # (only to tell events from statuses, as tb run does)
        self.arena = bytearray(32 << 20)
        self.recorded = self.events = 0
        self.t0 = time.monotonic()

    def done(self) -> bool:
        a = self.args
        return bool(
            (a.duration and time.monotonic() - self.t0 >= a.duration)
            or (a.messages and self.recorded >= a.messages)
            or (a.trades and self.events >= a.trades)
        )

    def run(self, transport, cap, stop: list[int]) -> ExitCode:
        feed, view = self.feed, memoryview(self.arena)
        start = end = 0
        if not self._send(transport):
            return ExitCode.CONNECT
        while not stop and not self.done():
            select.select([transport.fd], [], [], 0.2)
            try:
                n = transport.recv_into(view[end:])
            except TransportError as exc:
                log.error("%s", exc)
                return ExitCode.CONNECT
            if n is None:
                continue
            if n == 0:
                log.info("the server closed the connection")
                return ExitCode.OK
            end += n
            try:
                if not feed.upgraded:
                    start = feed.upgrade(view[:end])
                    if not start:
                        continue
                start += feed.ws.receive(view[start:end])
                code = self._record(cap)
            except (InvalidHandshake, ProtocolError) as exc:
                log.error("%s", exc)
                return ExitCode.CONNECT
            if not self._send(transport):
                return ExitCode.CONNECT
            if code is not None:
                return code
            if feed.ws.state is State.CLOSED:
                ws = feed.ws
                log.info("the server closed the websocket (%s %s)", ws.close_code, ws.close_reason)
                return ExitCode.OK
            if start == end:
                start = end = 0
            elif len(self.arena) - end < (1 << 20):
                self.arena[: end - start] = view[start:end].tobytes()
                start, end = 0, end - start
        return ExitCode.OK

    def _record(self, cap) -> ExitCode | None:
        """Write the complete messages that carry events; drive the session with the statuses.
        An exit code if the session ended."""
        messages = self.feed.ws.messages
        try:
            for payload in messages:
                if self.done():
                    return ExitCode.OK
                batch = self.router.route([payload])
                if batch.events > len(batch.statuses):
                    cap.write(bytes(payload))
                    self.recorded += 1
                    self.events += batch.events - len(batch.statuses)
                try:
                    self.feed.on_statuses(batch.statuses)
                except AuthFailed as exc:
                    log.error("%s", exc)
                    return ExitCode.AUTH
                except FeedError as exc:
                    log.error("%s", exc)
                    return ExitCode.CONNECT
        finally:
            messages.clear()  # (views into the arena: not kept past this receive)
        return None

    def _send(self, transport) -> bool:
        out = self.feed.data_to_send()
        if not out:
            return True
        try:
            transport.sock.setblocking(True)
            transport.sock.sendall(out)
            transport.sock.setblocking(False)
        except OSError as exc:
            log.error("cannot send to the server: %s", exc)
            return False
        return True

"""`tb record`: save a live feed to a capture file that `tb replay` can serve.

It speaks the same session as `tb run` (upgrade, auth, subscribe, pings answered) and writes each
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
from tb.logs import write_line
from tb.signals import STOP_SIGNALS

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
    from tb.feed import AuthFailed, FeedError, Session
    from tb.route import Router
    from tb.transport import TLSVerifyError, TransportError, connect, parse_url
    from tb.ws import (
        Connection,
        InvalidHandshake,
        ProtocolError,
        State,
        client_request,
        parse_client_response,
    )

    try:
        url = parse_url(args.url)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    check_cafile(args.cafile)
    key, source = _resolve_key(args)
    folder = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out) or not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write {args.out}: not a writable file path")
    stop = []
    for s in STOP_SIGNALS:
        signal.signal(s, lambda *_: stop.append(1))
    try:
        t = connect(url, cafile=args.cafile, insecure=args.insecure)
    except TLSVerifyError as exc:
        log.error("%s", exc)
        return ExitCode.TLS
    except TransportError as exc:
        log.error("%s", exc)
        return ExitCode.CONNECT
    request, wskey = client_request(url.host_header, url.path)
    t.sock.setblocking(True)
    t.sock.sendall(request)
    t.sock.setblocking(False)
    ws = Connection(client=True)
    session = Session(key, source, args.subscribe)
    router = Router(1)
    arena = bytearray(32 << 20)
    view = memoryview(arena)
    start = end = 0
    upgraded = False
    recorded = events = 0
    t0 = time.monotonic()
    code = ExitCode.OK
    try:
        cap = CaptureWriter(args.out)
    except OSError as exc:
        t.close()
        raise CLIError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    with cap:
        while not stop:
            if args.duration and time.monotonic() - t0 >= args.duration:
                break
            if (args.messages and recorded >= args.messages) or (
                args.trades and events >= args.trades
            ):
                break
            select.select([t.fd], [], [], 0.2)
            try:
                n = t.recv_into(view[end:])
            except TransportError as exc:
                log.error("%s", exc)
                code = ExitCode.CONNECT
                break
            if n is None:
                continue
            if n == 0:
                log.info("the server closed the connection")
                break
            end += n
            try:
                if not upgraded:
                    h = parse_client_response(view[:end], wskey)
                    if h == 0:
                        continue
                    upgraded, start = True, h
                start += ws.receive(view[start:end])
            except (InvalidHandshake, ProtocolError) as exc:
                log.error("%s", exc)
                code = ExitCode.CONNECT
                break
            for payload in ws.messages:
                if (args.messages and recorded >= args.messages) or (
                    args.trades and events >= args.trades
                ):
                    stop.append(1)
                    break
                batch = router.route([payload])
                if batch.events > len(batch.statuses):
                    cap.write(bytes(payload))
                    recorded += 1
                    events += batch.events - len(batch.statuses)
                try:
                    for status in batch.statuses:
                        session.on_status(status)
                except AuthFailed as exc:
                    log.error("%s", exc)
                    return ExitCode.AUTH
                except FeedError as exc:
                    log.error("%s", exc)
                    code = ExitCode.CONNECT
                    stop.append(1)
            ws.messages.clear()
            for m in session.outgoing:
                ws.send_text(m)
            session.outgoing.clear()
            out = ws.data_to_send()
            if out:
                t.sock.setblocking(True)
                t.sock.sendall(out)
                t.sock.setblocking(False)
            if ws.state is State.CLOSED:
                log.info("the server closed the websocket (%s %s)", ws.close_code, ws.close_reason)
                break
            if start == end:
                start = end = 0
            elif len(arena) - end < (1 << 20):
                arena[: end - start] = view[start:end].tobytes()
                start, end = 0, end - start
    t.close()
    write_line(
        f"tb record: {recorded} messages, {events} events in {time.monotonic() - t0:.1f} s -> {args.out}"
    )
    return code

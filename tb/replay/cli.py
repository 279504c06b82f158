"""`tb replay` on the command line: the flags, the TLS context, and serving until stopped.

Prints 'listening on ws://HOST:PORT' (LISTENING parses it) once the server listens, and
'streaming to ADDR' (STREAMING_TO) when the first client's trades start, both on stdout and
flushed: tb demo, tb profile and the tests start `tb replay` as a process and wait for these
lines. Exit codes: 0 stopped (SIGINT/SIGTERM, or --once after the client), 1 cannot listen,
2 bad command line, certificate or unreadable capture.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Iterable

from tb.capture import CaptureError, read_capture
from tb.certs import CertError, self_signed_context, server_context
from tb.cli import positive_float, positive_int
from tb.exitcode import ExitCode
from tb.replay.server import ReplayServer

__all__ = ["LISTENING", "STREAMING_TO", "add_parser", "main"]

log = logging.getLogger("tb.replay")

#: The line `tb replay` prints once it listens; group 1 is the URL (tb demo, tb profile, tests).
LISTENING = re.compile(r"listening on (wss?://\S+)")
STREAMING_TO = re.compile(r"streaming to (\S+)")  # printed when a client starts getting trades


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
        return ExitCode.USAGE
    except CaptureError as exc:
        print(f"tb replay: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except OSError as exc:
        print(f"tb replay: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        server.start()
    except OSError as exc:
        print(f"tb replay: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.ERROR
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
    return ExitCode.OK

"""The command-line options `tb publish` and `tb consume` share, and their counter lines."""

from __future__ import annotations

import argparse
import resource
import time

from tb.cli import Parser
from tb.exitcode import ExitCode, help_text

__all__ = [
    "URL_HELP",
    "EXIT_HELP",
    "IntermixedParser",
    "add_nats_arguments",
    "duration",
    "stream_name",
    "Clock",
]

EXIT_HELP = help_text(
    [
        ExitCode.OK,
        ExitCode.ERROR,
        ExitCode.USAGE,
        ExitCode.AUTH,
        ExitCode.WORKER,
        ExitCode.CONNECT,
        ExitCode.TLS,
        ExitCode.UNDELIVERED,
    ]
)


def duration(text: str) -> float:
    """An argparse type: seconds, or a number with s, m, h or d (90s, 24h, 7d); 0 means none."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    mult = units.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 24h, 7d)") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def stream_name(text: str) -> str:
    """An argparse type: a JetStream stream name or subject prefix (no spaces, '.', '*', '>')."""
    if not text or any(ch in text for ch in " \t.*>/\\"):
        raise argparse.ArgumentTypeError(f"not a usable name: {text!r} (letters, digits, - and _)")
    return text


URL_HELP = (
    "NATS server, nats://HOST[:PORT] or tls://HOST[:PORT] (several: comma separated); "
    "credentials as nats://USER:PASSWORD@HOST or nats://TOKEN@HOST, better from "
    "NATS_USER/NATS_PASSWORD or NATS_TOKEN (kept off argv)"
)


def add_nats_arguments(p: argparse.ArgumentParser) -> None:
    """Stream, subject prefix, credentials and TLS (the URL is each command's positional)."""
    p.add_argument(
        "--stream", type=stream_name, default="TRADES", help="JetStream stream (default TRADES)"
    )
    p.add_argument(
        "--subject",
        type=stream_name,
        default=None,
        metavar="PREFIX",
        help="partition p is subject PREFIX.p (default: the stream's name)",
    )
    p.add_argument(
        "--creds",
        metavar="FILE",
        help="NATS credentials file (a user JWT and its NKey seed) or a bare NKey seed file"
        " (else $NATS_CREDS)",
    )
    p.add_argument(
        "--cafile", help="CA bundle to verify the server's TLS certificate with (implies TLS)"
    )


class IntermixedParser(Parser):
    """Positionals before and after the options (tb run appends the fds after them all; a
    worker's command follows `--`). Set as a subparser's class once it is made."""

    intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self.intermixing:  # (parse_known_intermixed_args calls this for each pass)
            return super().parse_known_args(args, namespace)
        self.intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self.intermixing = False


class Clock:
    """Wall and CPU time since start, for the final lines' cpu_s_per_million."""

    def __init__(self) -> None:
        self.wall0 = time.monotonic()
        self.cpu0 = self.cpu()

    @staticmethod
    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def line(self, records: int) -> str:
        wall = time.monotonic() - self.wall0
        cpu = self.cpu() - self.cpu0
        per_m = cpu / records * 1e6 if records else 0.0
        return f"wall_s={wall:.2f} cpu_s={cpu:.2f} cpu_s_per_million={per_m:.3f}"

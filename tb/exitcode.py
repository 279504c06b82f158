"""tb's exit codes: one enum that every command returns and `--help` prints.

A code names the first reason a run ended; later reasons never overwrite it, except that a run
which would end OK while records it routed were never written to a worker ends UNDELIVERED.
"""

from __future__ import annotations

import enum

__all__ = ["ExitCode", "help_text"]


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    AUTH = 3
    WORKER = 4
    CONNECT = 5
    TLS = 6
    OVERFLOW = 7
    UNDELIVERED = 8
    INTERRUPTED = 130

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "clean shutdown (SIGINT, SIGTERM or SIGHUP: every routed record was written to "
    "the worker first; or --once and the server closed normally)",
    ExitCode.ERROR: "internal error (for the other commands: the failure their --help names)",
    ExitCode.USAGE: "bad command line",
    ExitCode.AUTH: "authentication failed (the feed refused the key, or NATS the credentials; the "
    "message names where they came from)",
    ExitCode.WORKER: "the worker exited (and the restart policy gave up), or could not be started",
    ExitCode.CONNECT: "--once: the connection failed or ended abnormally (tb publish/consume: "
    "the NATS server is unreachable)",
    ExitCode.TLS: "TLS setup failed: the certificate did not verify, or --tls ktls is not "
    "available here",
    ExitCode.OVERFLOW: "--on-overflow exit (or --on-spill-full exit): the pipes (and the spool) "
    "stayed full for longer than --overflow-timeout",
    ExitCode.UNDELIVERED: "records tb routed were never delivered to a worker (the worker stopped "
    "reading or died and could not be restarted before --shutdown-timeout); the final line's "
    "undelivered_at_exit says how many",
    ExitCode.INTERRUPTED: "a second stop signal: tb exits at once, without the flush or the final "
    "line (spool files it leaves are discarded by the next run)",
}


def help_text(codes: list[ExitCode] | None = None) -> str:
    """The `exit codes:` epilog for --help, wrapped to 100 columns."""
    import textwrap

    lines = ["exit codes:"]
    for code in codes or list(ExitCode):
        text = f"  {int(code)}  {code.meaning}"
        lines += textwrap.wrap(text, 98, subsequent_indent="     ")
    return "\n".join(lines) + "\n"

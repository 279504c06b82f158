"""tb past one machine: the pipes' records carried over NATS JetStream.

Theory of operation. A partition is a pipe index. `tb publish` is an ordinary worker of `tb run`:
it reads pipe p and publishes its records to subject `PREFIX.p` of one stream; `tb consume` reads
the durable consumers of some partitions and writes each partition's records to a local pipe of
its own worker, supervised as `tb run` supervises one. So a symbol's trades stay on one
partition, in feed order, from the feed to the far worker, and the engine (stored, replicated,
acknowledged) does the distribution: tb adds no protocol of its own.

A message is a run of whole records in the pipe format (`[u32 LE length][JSON]...`), cut at a
record boundary, never more than a few tens of KiB (fewer, larger messages are what JetStream
moves fastest; a message is never held back waiting to fill up). Its `Nats-Msg-Id` is
`<publisher>.<partition>.<n>`: a publisher process names itself once at start, so a message
resent after a reconnect is a duplicate the server drops, and a restarted publisher never
collides with its predecessor.

What lives where: connection.py (URL, credentials, TLS, one-line errors), stream.py (the stream
and the partitions), publisher.py (`tb publish`'s engine), consumer.py (`tb consume`'s NATS side
and its pipe side). Every failure a user can cause is a JetStreamError with an exit code.
"""

from __future__ import annotations

from tb.exitcode import ExitCode

__all__ = ["JetStreamError", "NATS_MISSING"]

NATS_MISSING = "the NATS client is not installed: pip install 'tb[nats]' (in a checkout: pip install -e '.[nats]')"


class JetStreamError(Exception):
    """A NATS or stream problem, said in one line; `code` is the exit code it ends a run with."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code

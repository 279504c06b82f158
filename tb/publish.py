"""`tb publish`: a worker of `tb run` that publishes each pipe's records to NATS JetStream.

    tb run URL --pipes 32 -- tb publish nats://nats1:4222 --stream TRADES

The command line, the stream check and the exit; the engine and its guarantees are
tb.jetstream.publisher's.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import stat

from tb.cli import CLIError, add_logging_arguments, parse_size, positive_int, seconds
from tb.exitcode import ExitCode
from tb.jetstream import JetStreamError
from tb.jetstream.options import (
    EXIT_HELP,
    URL_HELP,
    Clock,
    IntermixedParser,
    add_nats_arguments,
    duration,
)
from tb.logs import write_counters, write_line
from tb.signals import STOP_SIGNALS

__all__ = ["add_parser", "main"]

log = logging.getLogger("tb.publish")

STATS_PREFIX = "tb publish stats: "
FINAL_PREFIX = "tb publish: final "


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "publish",
        help="a worker for tb run: publish each pipe's records to a NATS JetStream stream",
        usage="tb run URL --pipes N -- tb publish NATS_URL [--stream NAME] [options] [FD...]",
        description="Read the pipes tb run gives it (FD... or $TB_PIPE_FDS) and publish pipe p's "
        "records, whole and in order, to subject PREFIX.p of the stream, batched into messages, "
        "each with a Nats-Msg-Id so that a resend after a reconnect is dropped by the server. "
        "Creates the stream (subjects PREFIX.*, file storage) when it is missing. While NATS is "
        "unreachable it stops reading the pipes, and resends what was not acknowledged once it "
        "is back.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_nats_arguments(p)
    p.add_argument(
        "--replicas", type=positive_int, default=1, help="replicas of a stream it creates (1)"
    )
    p.add_argument(
        "--max-age",
        type=duration,
        default=0.0,
        metavar="DUR",
        help="a created stream keeps messages this long (e.g. 24h, 7d; default: no limit)",
    )
    p.add_argument(
        "--window",
        type=positive_int,
        default=64,
        help="messages published and not yet acknowledged, at most (default 64); what a SIGKILL "
        "of tb publish can lose is this many messages",
    )
    p.add_argument(
        "--message-size",
        type=parse_size,
        default=64 << 10,
        help="largest message, in whole records (default 64K; the server's limit is 1M)",
    )
    p.add_argument(
        "--stats", type=seconds, default=0.0, metavar="SECONDS", help="print counters every SECONDS"
    )
    p.add_argument(
        "--shutdown-timeout",
        type=seconds,
        default=10.0,
        help="at SIGTERM/SIGINT/SIGHUP: seconds to wait for the acks of what was read (10)",
    )
    p.add_argument("url", metavar="NATS_URL", help=URL_HELP)
    p.add_argument(
        "fds",
        nargs="*",
        metavar="FD",
        help="the pipes' read ends (tb run appends them after every option; default $TB_PIPE_FDS)",
    )
    p.__class__ = IntermixedParser
    add_logging_arguments(p)
    p.set_defaults(func=main)


def _pipe_fds(args: argparse.Namespace) -> list[int]:
    from tb.pipes import PipeError, fds_from_env

    try:
        fds = [int(fd) for fd in args.fds] or fds_from_env()
    except ValueError:
        raise CLIError(f"not a file descriptor: {' '.join(args.fds)}") from None
    except PipeError as exc:
        raise CLIError(str(exc)) from None
    for fd in fds:
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            raise CLIError(f"fd {fd} is not open: start tb publish as tb run's worker") from None
        if not stat.S_ISFIFO(mode):
            raise CLIError(f"fd {fd} is not a pipe: start tb publish as tb run's worker")
    return fds


def main(args: argparse.Namespace) -> int:
    from tb.jetstream.connection import parse_target

    fds = _pipe_fds(args)
    try:
        target = parse_target(args.url, creds=args.creds, cafile=args.cafile)
    except JetStreamError as exc:
        raise CLIError(str(exc)) from None
    try:
        return asyncio.run(_publish(args, target, fds))
    except JetStreamError as exc:
        write_line(f"tb publish: error: {exc}")
        return exc.code


async def _publish(args: argparse.Namespace, target, fds: list[int]) -> int:
    from tb.jetstream.connection import connect
    from tb.jetstream.publisher import PublishCounters, Publisher
    from tb.jetstream.stream import StreamSpec, ensure_stream

    clock = Clock()
    counters = PublishCounters()
    publisher: Publisher | None = None

    async def on_disconnected() -> None:
        if publisher is not None:
            await publisher.disconnected()

    async def on_reconnected() -> None:
        if publisher is not None:
            await publisher.reconnected()

    nc = await connect(
        target,
        name="tb publish",
        on_disconnected=on_disconnected,
        on_reconnected=on_reconnected,
    )
    try:
        js = nc.jetstream()
        prefix = args.subject or args.stream
        spec = StreamSpec(args.stream, prefix, replicas=args.replicas, max_age=args.max_age)
        if await ensure_stream(js, spec, list(range(len(fds))), create=True):
            log.info("created stream %s (subjects %s.*, file storage)", args.stream, prefix)
        publisher = Publisher(
            nc,
            js,
            fds,
            prefix=prefix,
            stream=args.stream,
            window=args.window,
            message_size=args.message_size,
            counters=counters,
        )
        log.info(
            "publishing %d pipes to %s, stream %s, subjects %s.0-%d",
            len(fds), target.shown, args.stream, prefix, len(fds) - 1,
        )  # fmt: skip
        return await _run(publisher, args, clock)
    finally:
        await _close(nc)


async def _run(publisher, args: argparse.Namespace, clock: Clock) -> int:
    loop = asyncio.get_running_loop()
    stop_signal: list[str] = []

    def on_signal(signum: int) -> None:
        if stop_signal:
            write_line(f"tb publish: second {signal.Signals(signum).name}: exiting at once")
            os._exit(ExitCode.INTERRUPTED)
        stop_signal.append(signal.Signals(signum).name)
        log.info("%s: stopping; waiting for the acks of what was read", stop_signal[0])
        publisher.stop()

    for s in STOP_SIGNALS:
        loop.add_signal_handler(s, on_signal, s)
    stats = asyncio.create_task(_stats(publisher, args.stats)) if args.stats else None
    task = asyncio.create_task(publisher.run())
    while not task.done():
        await asyncio.wait([task], timeout=0.2)
        if stop_signal and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), args.shutdown_timeout)
            except TimeoutError:
                task.cancel()
                log.error(
                    "%.0f s after %s: %d records read were not acknowledged",
                    args.shutdown_timeout,
                    stop_signal[0],
                    publisher.unacked_records,
                )
            break
    if stats is not None:
        stats.cancel()
    failed = None
    if task.done() and not task.cancelled():
        failed = task.exception()  # (publish_async or a pipe read that raised: said, not lost)
        if failed is not None:
            log.error("tb publish stopped: %s: %s", type(failed).__name__, failed)
    unacked = publisher.unacked_records
    c = publisher.c
    line = f"{FINAL_PREFIX}{_counters_line(publisher)} unacked={unacked} {clock.line(c.acked)}"
    write_counters("final", line, "tb.publish")
    if publisher.error or failed is not None:
        return ExitCode.ERROR
    return ExitCode.UNDELIVERED if unacked else ExitCode.OK


def _counters_line(publisher) -> str:
    c = publisher.c
    return (
        f"published={c.published} messages={c.messages} acked={c.acked} resent={c.resent}"
        f" duplicates={c.duplicates} disconnects={c.disconnects} in_flight={publisher.in_flight}"
        f" read_bytes={c.read_bytes}"
    )


async def _stats(publisher, every: float) -> None:
    last = publisher.c.acked
    while True:
        await asyncio.sleep(every)
        now = publisher.c.acked
        line = f"{STATS_PREFIX}{(now - last) / every:,.0f} trades/s {_counters_line(publisher)}"
        write_counters("stats", line, "tb.publish")
        last = now


async def _close(nc) -> None:
    try:
        await asyncio.wait_for(nc.close(), 2.0)
    except Exception:  # noqa: BLE001 -- leaving anyway; the counters are already said
        pass

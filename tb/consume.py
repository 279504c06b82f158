"""`tb consume`: some partitions of a JetStream stream, into local pipes, to a supervised worker.

    tb consume nats://nats1:4222 --stream TRADES --partitions 0-15 --workdir /srv/w -- ./worker

The command line and the run's life (start, stop signals, stats, the end); the two halves and
the guarantees are tb.jetstream.consumer's.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os

from tb.cli import (
    CLIError,
    add_logging_arguments,
    add_supervision_arguments,
    listen_address,
    parse_size,
    positive_int,
    seconds,
)
from tb.exitcode import ExitCode
from tb.jetstream import JetStreamError
from tb.jetstream.options import (
    EXIT_HELP,
    URL_HELP,
    Clock,
    IntermixedParser,
    add_nats_arguments,
    stream_name,
)
from tb.logs import write_counters, write_line

__all__ = ["add_parser", "main"]

log = logging.getLogger("tb.consume")

STATS_PREFIX = "tb consume stats: "
FINAL_PREFIX = "tb consume: final "


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "consume",
        help="the far end of tb publish: some partitions of a stream into pipes to a worker",
        usage="tb consume NATS_URL --stream NAME --partitions SPEC [--durable NAME] --workdir DIR "
        "[options] -- WORKER [ARGS...]",
        description="Read partitions SPEC (0-15, 3,7,9) of the stream through one durable "
        "consumer each, and write each partition's records, in stream order, to a pipe of its "
        "own (pipe k = the k-th partition of SPEC; TB_PARTITIONS names them) to a worker started, "
        "supervised and restarted as tb run does. A message is acknowledged once its records "
        "are in the pipe; the last stream sequence written per partition is kept in DIR, so "
        "that a restarted tb consume never writes a message twice.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="NATS_URL", help=URL_HELP)
    add_nats_arguments(p)
    p.add_argument(
        "--partitions", required=True, metavar="SPEC", help="partitions to read: 0-15, 3,7,9"
    )
    p.add_argument(
        "--durable",
        type=stream_name,
        default="tb",
        help="durable consumer names: NAME_p for partition p (default tb)",
    )
    p.add_argument(
        "--workdir", required=True, metavar="DIR", help="the worker's directory; tb's marks too"
    )
    p.add_argument(
        "--max-buffer",
        type=parse_size,
        default=64 << 20,
        help="bytes fetched and not yet in the pipes, at most (default 64M); a SIGKILL of tb "
        "consume loses what its worker had not read, never more than this plus the pipes",
    )
    p.add_argument("--batch", type=positive_int, default=64, help="messages per fetch (default 64)")
    p.add_argument(
        "--ack-wait",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="the server delivers a message again if it is not acknowledged this long (60)",
    )
    p.add_argument(
        "--pipe-size", type=parse_size, default=None, help="pipe buffer size (default: max)"
    )
    p.add_argument(
        "--stats", type=seconds, default=0.0, metavar="SECONDS", help="print counters every SECONDS"
    )
    p.add_argument(
        "--metrics",
        type=listen_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics (tb_consume_...) on http://HOST:PORT/metrics and a health"
        " check on /healthz (200 while connected to NATS, every partition's consumer bound and"
        " the worker alive, else 503 and why); needs pip install 'tb[metrics]'",
    )
    add_supervision_arguments(p)
    p.add_argument("worker", nargs="*", help="-- WORKER [ARGS...]")
    add_logging_arguments(p)
    p.__class__ = IntermixedParser
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from tb.jetstream.connection import parse_target
    from tb.jetstream.stream import parse_partitions

    worker = args.worker
    if not worker:
        raise CLIError("no worker: give it after --, e.g. tb consume URL ... -- ./worker ARGS")
    try:
        partitions = parse_partitions(args.partitions)
    except ValueError as exc:
        raise CLIError(f"--partitions: {exc}") from None
    if not os.path.isdir(args.workdir):
        raise CLIError(f"--workdir {args.workdir} is not a directory")
    try:
        target = parse_target(args.url, creds=args.creds, cafile=args.cafile)
    except JetStreamError as exc:
        raise CLIError(str(exc)) from None
    run = Consume(args, target, partitions, worker)
    if args.metrics is not None:
        from tb.jetstream.metrics import ConsumeCollector, consume_health
        from tb.metrics import MetricsError, MetricsServer

        try:
            run.metrics = MetricsServer(
                *args.metrics,
                ConsumeCollector(run.snapshot),
                lambda: consume_health(run.snapshot()),
            )
        except MetricsError as exc:
            raise CLIError(str(exc)) from None
    try:
        return run.run()
    except JetStreamError as exc:
        write_line(f"tb consume: error: {exc}")
        return exc.code
    finally:
        if run.metrics is not None:
            run.metrics.close()


class Consume:
    """One run of tb consume: the NATS side started, the pipe side on a tb loop, the end."""

    def __init__(self, args: argparse.Namespace, target, partitions: list[int], worker: list[str]):
        from tb.jetstream.consumer import ConsumeCounters, NatsSide

        self.args = args
        self.partitions = partitions
        self.worker = worker
        self.c = ConsumeCounters()
        self.side = NatsSide(
            target,
            stream=args.stream,
            prefix=args.subject or args.stream,
            durable=args.durable,
            partitions=partitions,
            batch=args.batch,
            max_bytes=args.max_buffer,
            ack_wait=args.ack_wait,
        )
        self.side.counters = self.c
        self.code = ExitCode.OK
        self.clock = Clock()
        self.metrics = None  # a tb.metrics.MetricsServer, with --metrics
        self.delivery = None
        self.supervisor = None

    def run(self) -> int:
        from tb.jetstream.consumer import Delivery, WrittenMarks
        from tb.loop import choose_loop
        from tb.pipes import PipeError, PipeWriter, open_pipes
        from tb.signals import StopSignals
        from tb.supervisor import RestartPolicy, Supervisor

        args, side = self.args, self.side
        try:
            side.start()
        except JetStreamError:
            side.close()
            raise
        path = os.path.join(args.workdir, f".tb-consume-{args.stream}-{args.durable}.seq")
        marks = WrittenMarks(path, self.partitions)
        self._check_marks(marks)
        loop = choose_loop("epoll")
        try:
            pipeset = open_pipes(len(self.partitions), args.pipe_size)
        except PipeError as exc:
            side.close()
            raise JetStreamError(str(exc)) from None
        writer = PipeWriter(loop, pipeset.write_fds, max_buffer=1 << 62)
        self.delivery = Delivery(loop, side, writer, marks, self.c)
        os.environ["TB_PARTITIONS"] = ",".join(map(str, self.partitions))
        self.supervisor = Supervisor(
            loop,
            self.worker,
            args.workdir,
            pipeset,
            writer,
            self.c,
            policy=RestartPolicy(mode=args.restart, max_restarts=args.max_restarts),
            on_gave_up=lambda: self._stop(loop, ExitCode.WORKER),
            stall_warning=args.stall_warning,
        )
        signals = StopSignals(loop, lambda name: self._on_signal(loop, name))
        undelivered = 0
        try:
            if self.supervisor.start():
                if self.metrics is not None:
                    self.metrics.start()
                log.info(
                    "consuming partitions %s of stream %s from %s into %d pipes",
                    args.partitions, args.stream, side.target.shown, len(self.partitions),
                )  # fmt: skip
                side.start_fetching()
                self._tick(loop)
                if args.stats:
                    loop.call_later(args.stats, lambda: self._stats(loop, 0))
                loop.run()
        except (PipeError, JetStreamError) as exc:  # (as tb run: one line, then the flush)
            log.error("%s", exc)
            self.code = getattr(exc, "code", ExitCode.ERROR)
        finally:
            side.stop_fetching()
            undelivered = self.supervisor.shutdown(args.shutdown_timeout)
            self.c.undelivered_at_exit = undelivered
            self.delivery.settle()
            self.delivery.rewind()
            side.close()
            marks.close()
            signals.restore()
            loop.close()
        if undelivered:
            log.error("%d records consumed were never delivered to a worker", undelivered)
            if self.code == ExitCode.OK:
                self.code = ExitCode.UNDELIVERED
        write_counters(
            "final",
            f"{FINAL_PREFIX}{self._counters_line()} undelivered_at_exit={undelivered}"
            f" {self.clock.line(self.c.consumed)}",
            "tb.consume",
        )
        if self.metrics is not None:
            self.metrics.close()  # (after the final line: its last scrape agrees with it)
        return self.code

    def snapshot(self):
        """The counters and states at this moment, for --metrics (from its thread: only reads)."""
        from tb.jetstream.metrics import ConsumeSnapshot

        side, sup = self.side, self.supervisor
        w = self.delivery.writer if self.delivery is not None else None
        return ConsumeSnapshot(
            c=copy.copy(self.c),
            partitions=self.partitions,
            written_records=list(w.written_records) if w else [],
            queued_records=w.queued_records if w else 0,
            queued_bytes_per_pipe=list(w.queued_bytes_per_pipe) if w else [],
            in_flight_bytes=side.in_flight_bytes,
            connected=side.connected,
            down_since=side.down_since,
            bound=side.bound(),
            worker_alive=sup is not None and sup.running,
            worker_gave_up=sup is not None and sup.gave_up,
            stopping=side.stopping,
        )

    def _check_marks(self, marks) -> None:
        """A mark past the stream's last sequence means the stream was made anew: start over."""
        for k, seq in enumerate(marks.load()):
            if seq > self.side.last_seq:
                log.warning(
                    "partition %d: %s says sequence %d was written, but the stream ends at %d "
                    "(made anew?): starting that partition over",
                    self.partitions[k], marks.path, seq, self.side.last_seq,
                )  # fmt: skip
                marks.save(k, 0)

    def _on_signal(self, loop, name: str) -> None:
        log.info("%s: stopping (flushing the pipes to the worker)", name)
        loop.stop()

    def _stop(self, loop, code: ExitCode) -> None:
        if self.code == ExitCode.OK:
            self.code = code
        loop.stop()

    def _tick(self, loop) -> None:
        """Ack what the writer wrote on its own (it drains full pipes when they are writable),
        every 20 ms while acks wait, else once a second; and watch for stalled pipes."""
        self.delivery.settle()
        self.supervisor.check_stalls(loop.time())
        loop.call_later(0.02 if self.delivery.waiting else 1.0, lambda: self._tick(loop))

    def _stats(self, loop, last: int) -> None:
        now, every = self.c.consumed, self.args.stats
        line = f"{STATS_PREFIX}{(now - last) / every:,.0f} trades/s {self._counters_line()}"
        write_counters("stats", line, "tb.consume")
        loop.call_later(every, lambda: self._stats(loop, now))

    def _counters_line(self) -> str:
        c, w = self.c, self.delivery.writer
        return (
            f"consumed={c.consumed} messages={c.messages} written={sum(w.written_records)}"
            f" queued={w.queued_records} acked={c.acked} redelivered={c.redelivered}"
            f" skipped={c.skipped} malformed={c.malformed} resets={c.resets}"
            f" lost_in_worker={c.lost_in_worker} worker_restarts={c.worker_restarts}"
            f" in_flight_bytes={self.side.in_flight_bytes}"
        )

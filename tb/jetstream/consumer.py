"""`tb consume`'s two halves: JetStream on an asyncio thread, the pipes on tb's loop.

Theory of operation. The pipe side is `tb run`'s own: a PipeWriter and a Supervisor (start,
restart policy, resync after a worker's death, stall warnings, the flush and the count of what
never reached a worker at exit) on a tb loop in the main thread, where the stop signals arrive.
nats-py is asyncio, so the NATS side runs an asyncio loop in a second thread. They meet in two
places only:

- the hand-off: a fetch appends (partition, messages) to a deque and writes an eventfd, which is
  a reader on the tb loop; the tb loop drains the deque. The messages fetched and not yet
  acknowledged are bounded in bytes (--max-buffer): past it, the fetches wait, so a worker that
  does not read stops the fetching, not the memory;
- the acks: the tb loop hands a list of messages to the asyncio loop (call_soon_threadsafe),
  which acknowledges them and frees their bytes of the bound.

One durable pull consumer per partition (`DURABLE_p`, filtered on `PREFIX.p`, explicit acks)
delivers the partition in stream order. A message is written to its partition's pipe whole
(one PipeWriter.submit) and acknowledged only once its last byte is in the pipe (the bytes given
to the writer minus those still queued reach its end). So the ack floor never passes a record
that is not in a pipe.

Exactly once at the worker. The stream sequence of the last message given to each pipe is kept
in DIR (`.tb-consume-STREAM-DURABLE.seq`, 8 bytes per partition), written before the message
goes to the writer. A message at or below it is a redelivery of what this pipe already has (the
previous process's, after a SIGKILL, or this one's, after an ack wait ran out): it is skipped
and acknowledged. At a clean exit the mark is put back to the last message actually written, so
what was queued and never written comes again next time. What a SIGKILL of tb consume loses is
what its worker had not read: the pipes' contents (the worker gets SIGHUP and its pipes die with
it) and the records queued for them, never more than --max-buffer.

Order after trouble. A pull consumer keeps messages delivered and not acknowledged for
redelivery after the ack wait, and meanwhile delivers newer ones: a restarted tb consume, or
one whose connection broke while messages were on the wire, would see a partition's messages out
of order. So whenever a partition's consumer is bound (at start and after every reconnect) and
it has delivered more than is acknowledged, it is made again from its ack floor: what follows
the floor comes again, in order, and what the pipe already has is skipped by the mark.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass

from tb.exitcode import ExitCode
from tb.jetstream import JetStreamError
from tb.jetstream.records import complete_end, count_records
from tb.loop import Loop
from tb.pipes import PipeWriter

__all__ = ["ConsumeCounters", "Delivery", "NatsSide", "WrittenMarks"]

log = logging.getLogger("tb.consume")

FETCH_WAIT = 1.0  # seconds a fetch waits for a message before it asks again


@dataclass(slots=True)
class ConsumeCounters:
    messages: int = 0  # messages written (given to the pipes)
    consumed: int = 0  # records given to the pipes
    acked: int = 0  # messages acknowledged
    redelivered: int = 0  # messages the server delivered again
    skipped: int = 0  # redelivered messages the pipe already had (not written twice)
    malformed: int = 0  # messages that were not whole records (skipped, acknowledged)
    resets: int = 0  # consumers made again from their ack floor
    lost_in_worker: int = 0  # (the Supervisor's) records a dying worker was inside
    worker_restarts: int = 0
    disconnects: int = 0  # times the connection to NATS was lost
    undelivered_at_exit: int = 0  # records given to the pipes that no worker read (at exit)


class WrittenMarks:
    """The last stream sequence given to each partition's pipe, in a file in DIR."""

    _U64 = struct.Struct("<Q")

    def __init__(self, path: str, partitions: list[int]) -> None:
        self.path = path
        self.partitions = partitions
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise JetStreamError(f"cannot keep {path}: {exc.strerror}", ExitCode.USAGE) from None

    def load(self) -> list[int]:
        out = []
        for p in self.partitions:
            raw = os.pread(self.fd, 8, 8 * p)
            out.append(self._U64.unpack(raw)[0] if len(raw) == 8 else 0)
        return out

    def save(self, k: int, seq: int) -> None:
        try:
            os.pwrite(self.fd, self._U64.pack(seq), 8 * self.partitions[k])
        except OSError as exc:  # (a full or failing disk: without the mark, no exactly-once)
            raise JetStreamError(
                f"cannot keep {self.path}: {exc.strerror or exc}", ExitCode.ERROR
            ) from None

    def close(self) -> None:
        os.close(self.fd)


class NatsSide:
    """The asyncio thread: the connection, one pull consumer per partition, fetches and acks."""

    def __init__(
        self,
        target,
        *,
        stream: str,
        prefix: str,
        durable: str,
        partitions: list[int],
        batch: int,
        max_bytes: int,
        ack_wait: float,
    ) -> None:
        self.target = target
        self.stream = stream
        self.prefix = prefix
        self.durable = durable
        self.partitions = partitions
        self.batch = batch
        self.max_bytes = max_bytes
        self.ack_wait = ack_wait
        self.counters: ConsumeCounters | None = None
        self.inbox: deque[tuple[int, list]] = deque()
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tb-nats", daemon=True)
        self.nc = None
        self.js = None
        self.last_seq = 0  # the stream's last sequence when it was checked
        self.in_flight_bytes = 0  # fetched, not yet acknowledged
        self.room: asyncio.Event | None = None
        self.epoch = 0  # bumped at each reconnect: consumers are bound again
        self.bound_epoch = [-1] * len(partitions)  # the epoch each partition was last bound in
        self.down_since: float | None = None  # wall-clock time the connection was lost
        self.stopping = False
        self._tasks: list[asyncio.Task] = []

    # -- from the main thread -------------------------------------------------------------------
    def call(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        """Connect and check the stream; JetStreamError (one line) if either fails."""
        self.thread.start()
        self.call(self._connect())

    def start_fetching(self) -> None:
        self.call(self._start_fetching())

    def ack(self, msgs: list) -> None:
        self.loop.call_soon_threadsafe(self._ack, msgs)

    def stop_fetching(self) -> None:
        try:
            self.call(self._stop_fetching(), 10.0)
        except TimeoutError:
            log.warning("the fetches did not stop within 10 s")

    def close(self) -> None:
        """Send the acks still queued, close the connection, end the thread."""
        try:
            self.call(self._close(), 10.0)
        except TimeoutError:
            log.warning("NATS did not close within 10 s")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)
        os.close(self.wake_fd)

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def bound(self) -> list[bool]:
        """Whether each partition's consumer is bound on the present connection."""
        return [e == self.epoch for e in self.bound_epoch]

    # -- on the asyncio thread ------------------------------------------------------------------
    async def _connect(self) -> None:
        from tb.jetstream.connection import connect
        from tb.jetstream.stream import StreamSpec, ensure_stream

        self.room = asyncio.Event()
        self.room.set()
        self.nc = await connect(
            self.target,
            name="tb consume",
            on_disconnected=self._disconnected,
            on_reconnected=self._reconnected,
        )
        self.js = self.nc.jetstream()
        await ensure_stream(
            self.js, StreamSpec(self.stream, self.prefix), self.partitions, create=False
        )
        self.last_seq = (await self.js.stream_info(self.stream)).state.last_seq

    async def _disconnected(self) -> None:
        if self.down_since is None and not self.stopping:
            self.down_since = time.time()
            if self.counters is not None:
                self.counters.disconnects += 1

    async def _reconnected(self) -> None:
        self.epoch += 1
        self.down_since = None

    async def _start_fetching(self) -> None:
        self._tasks = [
            asyncio.create_task(self._fetch(k, p)) for k, p in enumerate(self.partitions)
        ]

    async def _bind(self, p: int):
        """The pull subscription of partition p's durable consumer, made again from its ack
        floor if it has delivered more than is acknowledged (module docstring)."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        name = f"{self.durable}_{p}"
        config = ConsumerConfig(
            durable_name=name,
            filter_subject=f"{self.prefix}.{p}",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_ack_pending=-1,  # (bounded here, in bytes: --max-buffer)
        )
        try:
            info = await self.js.consumer_info(self.stream, name)
        except NotFoundError:
            info = None
        if info is not None and info.delivered.stream_seq > info.ack_floor.stream_seq:
            start = info.ack_floor.stream_seq + 1
            log.info(
                "partition %d: consumer %s has %d messages delivered and not acknowledged: "
                "made again from its ack floor (stream sequence %d), in order",
                p, name, info.num_ack_pending, start,
            )  # fmt: skip
            await self.js.delete_consumer(self.stream, name)
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start
            info = None
            if self.counters is not None:
                self.counters.resets += 1
        if info is None:
            await self.js.add_consumer(self.stream, config)
        return await self.js.pull_subscribe_bind(durable=name, stream=self.stream)

    async def _fetch(self, k: int, p: int) -> None:
        import nats.errors

        sub, epoch, said = None, -1, False
        while not self.stopping:
            if not self.room.is_set():
                await self.room.wait()
                continue
            try:
                if epoch != self.epoch:
                    epoch = self.epoch
                    if sub is not None:
                        await _quietly(sub.unsubscribe())
                    sub = None
                    sub = await self._bind(p)
                    self.bound_epoch[k] = epoch
                msgs = await sub.fetch(self.batch, timeout=FETCH_WAIT)
            except (nats.errors.TimeoutError, TimeoutError):
                continue  # (nothing new within FETCH_WAIT)
            except Exception as exc:  # noqa: BLE001 -- the connection is down or coming back
                if self.stopping:
                    return
                self.bound_epoch[k] = -1
                if not said:
                    log.warning("partition %d: %s; trying again", p, str(exc) or type(exc).__name__)
                    said = True
                epoch = -1  # bind again (the consumer may have moved on)
                await asyncio.sleep(0.5)
                continue
            said = False
            if self.stopping:
                return  # (not handed off, not acknowledged: delivered again next time)
            self.in_flight_bytes += sum(len(m.data) for m in msgs)
            if self.in_flight_bytes >= self.max_bytes:
                self.room.clear()
            self.inbox.append((k, msgs))
            os.eventfd_write(self.wake_fd, 1)

    def _ack(self, msgs: list) -> None:
        nc = self.nc
        for m in msgs:
            self.in_flight_bytes -= len(m.data)
            if m.reply:
                # (Msg.ack() is this publish plus bookkeeping tb does not need)
                self._tasks.append(asyncio.ensure_future(nc.publish(m.reply, b"+ACK")))
        if len(self._tasks) > 4096:
            self._tasks = [t for t in self._tasks if not t.done()]
        if self.in_flight_bytes < self.max_bytes:
            self.room.set()

    async def _stop_fetching(self) -> None:
        self.stopping = True
        self.room.set()
        for t in self._tasks:
            if not t.done():
                t.cancel()

    async def _close(self) -> None:
        if self.nc is None:
            return
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        await _quietly(self.nc.flush(timeout=5))
        await _quietly(self.nc.close())


async def _quietly(coro) -> None:
    try:
        await coro
    except Exception:  # noqa: BLE001 -- closing or unbinding: nothing left to do about it
        pass


class Delivery:
    """The tb loop's side: handed-off messages into the pipes, in order; acks once written."""

    def __init__(
        self,
        loop: Loop,
        side: NatsSide,
        writer: PipeWriter,
        marks: WrittenMarks,
        counters: ConsumeCounters,
    ) -> None:
        self.loop = loop
        self.side = side
        self.writer = writer
        self.marks = marks
        self.c = counters
        n = len(side.partitions)
        self.last = marks.load()  # the last stream sequence given to each pipe
        self.settled = list(self.last)  # the last one whose bytes are all in the pipe
        self.submitted = [0] * n  # bytes given to the writer, per pipe
        self.pending: list[deque] = [deque() for _ in range(n)]  # (end, seq, msg) to ack
        self._runs: list = [None] * n
        self._counts = [0] * n
        self._said_malformed = False
        loop.add_reader(side.wake_fd, self.take)

    def take(self) -> None:
        """The hand-off has messages: write them to their pipes, then ack what is written."""
        try:
            os.eventfd_read(self.side.wake_fd)
        except BlockingIOError:
            pass
        inbox = self.side.inbox
        while inbox:
            k, msgs = inbox.popleft()
            for m in msgs:
                self._deliver(k, m)
        self.settle()

    def _deliver(self, k: int, m) -> None:
        c = self.c
        meta = m.metadata
        seq = meta.sequence.stream
        if meta.num_delivered > 1:
            c.redelivered += 1
        data = m.data
        if seq <= self.last[k]:
            c.skipped += 1
            self.pending[k].append((0, 0, m))  # the pipe has it: ack with those before it
            return
        if complete_end(data) != len(data):
            c.malformed += 1
            if not self._said_malformed:
                self._said_malformed = True
                log.error(
                    "partition %d: stream sequence %d is not whole records: skipped (is "
                    "anything but tb publish writing to %s.%d?)",
                    self.side.partitions[k], seq, self.side.prefix, self.side.partitions[k],
                )  # fmt: skip
            self.pending[k].append((0, 0, m))
            return
        records = count_records(data)
        self.marks.save(k, seq)  # before the pipe: a SIGKILL from here on skips it, never twice
        self.last[k] = seq
        runs, counts = self._runs, self._counts
        runs[k], counts[k] = data, records
        try:
            self.writer.submit(runs, counts, (k,))
        finally:
            runs[k] = None
        self.submitted[k] += len(data)
        self.pending[k].append((self.submitted[k], seq, m))
        c.messages += 1
        c.consumed += records

    def settle(self) -> None:
        """Acknowledge every message whose bytes are all in its pipe."""
        acks = []
        queued = self.writer.queued_bytes_per_pipe
        for k, pending in enumerate(self.pending):
            if not pending:
                continue
            written = self.submitted[k] - queued[k]  # (written, or dropped by a resync)
            while pending and pending[0][0] <= written:
                _, seq, m = pending.popleft()
                if seq:
                    self.settled[k] = seq
                acks.append(m)
        if acks:
            self.c.acked += len(acks)
            self.side.ack(acks)

    @property
    def waiting(self) -> bool:
        return any(self.pending)

    def rewind(self) -> None:
        """At a clean exit: the marks back to the last message actually written, so that what
        was queued and never written is delivered again next time."""
        for k, pending in enumerate(self.pending):
            if any(seq for _, seq, _ in pending):
                self.marks.save(k, self.settled[k])

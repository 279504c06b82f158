"""`tb publish`'s engine: a worker's pipes read, and published to JetStream, partition by partition.

Theory of operation. Everything runs on one asyncio loop (nats-py's own): each pipe's read end is
an asyncio reader; no tb loop, no thread. A read takes what the pipe holds (up to READ_SIZE), the
complete records are cut into messages of at most --message-size bytes (tb.jetstream.records: a
cut costs no Python step per record), and a partial last record waits for the next read. The
read ends are blocking (tb shares their file description, see tb.pipes): they are read only
when readable, so a read never waits.

Each partition is a lane: messages published (publish_async, one reply inbox for all) and not yet
acknowledged wait in its FIFO with their Nats-Msg-Id. An ack settles the head of its lane (acks
are taken in order: a later ack waits for the earlier ones). The window bounds the messages in
flight over all lanes; while it is full, or while the connection is down, no pipe is read: tb
then queues, and past its --max-buffer pauses the feed, as for any slow worker.

A message whose ack does not come within ACK_TIMEOUT, or that the server answers with an error,
and every message in flight when the connection comes back, is resent with the same Nats-Msg-Id,
its whole lane in order. The server stores a connection's messages in the order they arrive, so
what it kept of a lane is a prefix of what was sent: the resent prefix is dropped as duplicates
(counted from the acks' `duplicate` flag) and the rest lands in order. Lanes are independent:
one partition's order never waits for another's.

What tb publish has read and not had acknowledged when it is SIGKILLed is lost (tb counts the
torn record it may leave in a pipe as lost_in_worker): a read takes no more than the window has
room for, so at most --window messages of --message-size bytes, plus a partial record per pipe. At EOF on every pipe (tb run's end) it
waits for every ack, then exits 0; at SIGTERM/SIGINT/SIGHUP it stops reading and gives the acks
--shutdown-timeout seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass

from tb.jetstream.records import complete_end, count_records, cut_messages

__all__ = ["PublishCounters", "Publisher"]

log = logging.getLogger("tb.publish")

READ_SIZE = 1 << 20  # at most one read per pipe per turn of the loop; a pipe holds 1 MiB at most
ACK_TIMEOUT = 5.0  # seconds before an unacknowledged message is resent (with its lane)


@dataclass(slots=True)
class PublishCounters:
    read_bytes: int = 0
    published: int = 0  # records, first sends
    messages: int = 0  # messages, first sends
    acked: int = 0  # records acknowledged by the server
    resent: int = 0  # messages sent again
    duplicates: int = 0  # resent messages the server had already (dropped by Nats-Msg-Id)
    disconnects: int = 0


class _InFlight:
    __slots__ = ("msg_id", "payload", "records", "future", "sent_at")

    def __init__(self, msg_id: str, payload: bytes, records: int) -> None:
        self.msg_id = msg_id
        self.payload = payload
        self.records = records
        self.future: asyncio.Future | None = None
        self.sent_at = 0.0


class _Lane:
    """One partition: its pipe's read end, the partial record left, the messages in flight."""

    __slots__ = ("index", "fd", "subject", "tail", "ready", "inflight", "next_id", "eof", "reading")

    def __init__(self, index: int, fd: int, subject: str) -> None:
        self.index = index
        self.fd = fd
        self.subject = subject
        self.tail = b""  # the start of a record still arriving
        self.ready: deque[_InFlight] = deque()  # cut, not yet published
        self.inflight: deque[_InFlight] = deque()  # published, not yet acknowledged
        self.next_id = 0
        self.eof = False
        self.reading = False


class Publisher:
    """Reads `fds` (pipe p = partition p) and publishes them as `PREFIX.p` (module docstring)."""

    def __init__(
        self,
        nc,
        js,
        fds: list[int],
        *,
        prefix: str,
        stream: str,
        window: int,
        message_size: int,
        counters: PublishCounters,
    ) -> None:
        self.nc = nc
        self.js = js
        self.stream = stream
        self.window = window
        self.message_size = message_size
        self.c = counters
        self.name = os.urandom(6).hex()  # this process's Nats-Msg-Id prefix
        self.lanes = [_Lane(i, fd, f"{prefix}.{i}") for i, fd in enumerate(fds)]
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()  # something to publish, settle or resend
        self.stopping = False
        self.connected = True
        self.resend_all = False
        self.error: str | None = None  # a pipe ended inside a record
        self.in_flight = 0  # messages ready or in flight, over all lanes
        self._after_reconnect: asyncio.Task | None = None

    # -- reading the pipes ----------------------------------------------------------------------
    def _set_reading(self, on: bool) -> None:
        for lane in self.lanes:
            want = on and not lane.eof
            if want != lane.reading:
                lane.reading = want
                if want:
                    self.loop.add_reader(lane.fd, self._readable, lane)
                else:
                    self.loop.remove_reader(lane.fd)

    def _may_read(self) -> bool:
        return self.connected and not self.stopping and self.in_flight < self.window

    def _readable(self, lane: _Lane) -> None:
        # (no more than the window has room for: what a SIGKILL can lose stays within it)
        room = max(1, self.window - self.in_flight) * self.message_size
        data = os.read(lane.fd, min(READ_SIZE, room))
        if not data:
            lane.eof = True
            lane.reading = False
            self.loop.remove_reader(lane.fd)
            if lane.tail:
                self.error = f"pipe {lane.index} ended inside a record ({len(lane.tail)} bytes)"
                log.error("%s", self.error)
            self.wake.set()
            return
        self.c.read_bytes += len(data)
        if lane.tail:
            data = lane.tail + data
        end = complete_end(data)
        lane.tail = data[end:]
        if end:
            for payload in cut_messages(data[:end] if lane.tail else data, self.message_size):
                msg = _InFlight(f"{self.name}.{lane.index}.{lane.next_id}", payload, 0)
                msg.records = count_records(payload)
                lane.next_id += 1
                lane.ready.append(msg)
                self.in_flight += 1
            self.wake.set()
        if not self._may_read():
            self._set_reading(False)

    @property
    def done_reading(self) -> bool:
        return all(lane.eof for lane in self.lanes)

    # -- publishing -----------------------------------------------------------------------------
    async def _send(self, lane: _Lane, msg: _InFlight) -> None:
        msg.future = await self.js.publish_async(
            lane.subject, msg.payload, headers={"Nats-Msg-Id": msg.msg_id}
        )
        msg.sent_at = time.monotonic()
        msg.future.add_done_callback(lambda _f: self.wake.set())

    def _settle(self, lane: _Lane) -> bool:
        """Count the acknowledged head of the lane; True if the lane must be resent."""
        inflight = lane.inflight
        while inflight:
            head = inflight[0]
            future = head.future
            if not future.done():
                return time.monotonic() - head.sent_at > ACK_TIMEOUT
            if future.cancelled() or future.exception() is not None:
                if not future.cancelled():
                    log.warning(
                        "partition %d: the server did not store a message (%s); resending",
                        lane.index,
                        future.exception() or "no answer",
                    )
                return True
            inflight.popleft()
            self.in_flight -= 1
            self.c.acked += head.records
            if future.result().duplicate:
                self.c.duplicates += 1
        return False

    async def _resend(self, lane: _Lane) -> None:
        for msg in lane.inflight:
            if msg.future is not None and not msg.future.done():
                msg.future.cancel()  # (frees its place in nats-py's window)
            self.c.resent += 1
            await self._send(lane, msg)

    async def run(self) -> None:
        """Publish until every pipe is at EOF and every message acknowledged, or stop()."""
        self._set_reading(True)
        ticker = asyncio.create_task(self._tick())
        try:
            while True:
                self.wake.clear()
                if self.connected:
                    resend_all, self.resend_all = self.resend_all, False
                    for lane in self.lanes:
                        if lane.inflight and (self._settle(lane) or resend_all):
                            await self._resend(lane)
                        while lane.ready and self.connected:
                            msg = lane.ready.popleft()
                            lane.inflight.append(msg)
                            self.c.messages += 1
                            self.c.published += msg.records
                            await self._send(lane, msg)
                if self.in_flight == 0 and (self.done_reading or self.stopping):
                    return
                if self._may_read():
                    self._set_reading(True)
                await self.wake.wait()
        finally:
            ticker.cancel()
            self._set_reading(False)

    async def _tick(self) -> None:
        """Wake the loop now and then, so that ack timeouts are seen without any ack arriving."""
        while True:
            await asyncio.sleep(0.5)
            self.wake.set()

    # -- the connection's ups and downs ---------------------------------------------------------
    async def disconnected(self) -> None:
        self.connected = False
        self.c.disconnects += 1
        self._set_reading(False)

    async def reconnected(self) -> None:
        # (a task: nats-py awaits this callback in its reconnect path, and the requests below
        # need that path finished)
        self._after_reconnect = asyncio.create_task(self._resume())

    async def _resume(self) -> None:
        await self._wait_for_jetstream()
        self.connected = True
        self.resend_all = True  # acks of messages sent before may never come: send them again
        self.wake.set()

    async def _wait_for_jetstream(self) -> None:
        """After a server restart the stream may take a moment to come back: ask until it
        answers, so that no resend meets a JetStream that is not there yet."""
        for _ in range(200):
            try:
                await self.js.stream_info(self.stream)
                return
            except Exception:  # noqa: BLE001 -- not ready yet, whatever the reason
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        """Stop reading; run() returns once what was read is acknowledged."""
        self.stopping = True
        self._set_reading(False)
        self.wake.set()

    @property
    def unacked_records(self) -> int:
        return sum(m.records for lane in self.lanes for m in (*lane.ready, *lane.inflight))

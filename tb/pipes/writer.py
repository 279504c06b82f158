"""The nonblocking pipe writer: one write per non-empty pipe per batch, a bounded FIFO behind it.

Theory of operation. The router hands over one contiguous run of complete records per pipe per
batch. A pipe with nothing queued gets ONE os.write of its run; the kernel takes what fits (a
nonblocking pipe write larger than the free space is split mid-record) and the rest is queued. A
pipe with a queue never gets a direct write, so order is kept: the run is appended, and the loop's
writer callback drains the queue with ONE os.writev of up to IOV_MAX chunks whenever the pipe is
writable. The callback is registered while the queue is non-empty and removed when it empties.

Invariants:
- Queued data never refers to the caller's buffer: the caller may pass views into a receive arena
  that it reuses after submit() returns. Immutable bytes (or views of bytes) are kept as they are;
  anything else has its unwritten part copied once. After that a chunk is only ever sliced.
- A record counts as written once its last byte is in the pipe. A chunk carries its record count;
  only a partially written chunk has its u32 headers walked, and only over the bytes newly written.
- Every byte submitted is either written (written_bytes), queued (queued_bytes) or reported in a
  PipeError. Nothing is dropped silently.

Back-pressure: over_limit() says the caller should stop reading its socket (queued_bytes >=
max_buffer); once the queue has drained below max_buffer/2, on_drain() is called once.
"""

from __future__ import annotations

import errno
import math
import os
import select
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from itertools import islice

from tb.loop import Loop
from tb.pipes.errors import PipeError

__all__ = ["PipeWriter", "IOV_MAX"]

IOV_MAX = 1024  # os.sysconf("SC_IOV_MAX") on Linux; writev refuses more buffers (EINVAL)
_HEADER = struct.Struct("<I")

Buffer = bytes | bytearray | memoryview


class _Chunk:
    """A queued piece of one pipe's stream: data[off:] is still to be written."""

    __slots__ = ("data", "off", "rec_off", "records")

    def __init__(self, data: memoryview, off: int, records: int) -> None:
        self.data = data  # independent of the caller's buffer, starts at a record boundary
        self.off = off  # bytes of data already in the pipe
        self.rec_off = 0  # start of the first record not yet counted as written
        self.records = records  # records of this chunk not yet counted as written


def _complete_records(data: Buffer, start: int, end: int) -> tuple[int, int]:
    """Count the records lying wholly in data[start:end] (start on a boundary).

    Returns (count, offset of the first record not wholly inside). Pinned by
    tests/pipes/test_writer.py::test_records_counted_at_any_split."""
    unpack = _HEADER.unpack_from
    count = 0
    while start + 4 <= end:
        stop = start + 4 + unpack(data, start)[0]
        if stop > end:
            break
        start = stop
        count += 1
    return count, start


def _detach(run: Buffer, start: int) -> memoryview:
    """run[start:] as a view that stays valid after the caller reuses or releases its buffer.

    Pinned by test_writer.py::test_queued_data_does_not_depend_on_the_callers_buffer."""
    if isinstance(run, bytes):
        return memoryview(run)[start:]
    if isinstance(run, memoryview) and isinstance(run.obj, bytes):
        return run[start:]  # bytes cannot change; a slice outlives release() of the parent view
    return memoryview(bytes(memoryview(run)[start:]))


class PipeWriter:
    """Writes per-pipe record runs to nonblocking pipe write ends without ever blocking.

    The writer callbacks run on `loop`; a broken pipe found there raises PipeError out of
    loop.run(), naming the pipe.
    """

    def __init__(
        self,
        loop: Loop,
        write_fds: list[int],
        *,
        max_buffer: int = 1 << 30,
        on_drain: Callable[[], None] | None = None,
    ) -> None:
        n = len(write_fds)
        self.loop = loop
        self.fds = list(write_fds)
        self.max_buffer = max_buffer
        self.on_drain = on_drain
        self._queues: list[deque[_Chunk]] = [deque() for _ in range(n)]
        self._on_writable = [partial(self._write_queued, i) for i in range(n)]
        self._over = False
        self._closed = False
        # counters
        self.written_bytes = [0] * n
        self.written_records = [0] * n
        self.queued_bytes_per_pipe = [0] * n
        self.queued_bytes = 0
        self.queued_records = 0
        self.writes = 0  # write/writev syscalls made
        self.eagain = 0  # writes refused because the pipe was full
        self.partial_writes = 0  # writes the kernel took only part of

    # -- submitting -----------------------------------------------------------------------------
    def submit(self, runs: Sequence[Buffer | None], counts: Sequence[int]) -> None:
        """Write runs[i] (counts[i] complete records) to pipe i; queue what the pipe cannot take.

        At most one write syscall per non-empty pipe. The caller may reuse its buffers as soon as
        this returns. Raises PipeError if a pipe is broken (EPIPE: no read end open anywhere); the
        other pipes' runs are still written or queued first.
        """
        if self._closed:
            raise PipeError("the pipe writer is closed")
        if len(runs) != len(self.fds) or len(counts) != len(self.fds):
            raise ValueError(f"need {len(self.fds)} runs and counts, got {len(runs)}/{len(counts)}")
        error: PipeError | None = None
        for i, run in enumerate(runs):
            if not run:
                continue
            if self._queues[i]:
                self._enqueue(i, _detach(run, 0), 0, counts[i])  # behind what is queued
                continue
            try:
                self.writes += 1
                n = os.write(self.fds[i], run)
            except BlockingIOError:
                self.eagain += 1
                n = 0
            except OSError as exc:
                error = error or self._error(i, exc, len(run), counts[i])
                continue
            self.written_bytes[i] += n
            size = len(run)
            if n == size:
                self.written_records[i] += counts[i]
                continue
            if n:
                self.partial_writes += 1
            done, boundary = _complete_records(run, 0, n)  # walks only the written prefix
            self.written_records[i] += done
            self._enqueue(i, _detach(run, boundary), n - boundary, counts[i] - done)
        if self.queued_bytes >= self.max_buffer:
            self._over = True
        if error is not None:
            raise error

    def _enqueue(self, i: int, data: memoryview, off: int, records: int) -> None:
        queue = self._queues[i]
        if not queue:
            self.loop.add_writer(self.fds[i], self._on_writable[i])
        queue.append(_Chunk(data, off, records))
        left = len(data) - off
        self.queued_bytes += left
        self.queued_bytes_per_pipe[i] += left
        self.queued_records += records

    # -- draining -------------------------------------------------------------------------------
    def _write_queued(self, i: int) -> None:
        """The pipe is writable: one writev of up to IOV_MAX queued chunks, in order."""
        queue = self._queues[i]
        fd = self.fds[i]
        if not queue:
            self.loop.remove_writer(fd)
            return
        iov = [c.data[c.off :] if c.off else c.data for c in islice(queue, IOV_MAX)]
        try:
            self.writes += 1
            n = os.writev(fd, iov)
        except BlockingIOError:
            self.eagain += 1
            return
        except OSError as exc:
            raise self._error(i, exc, self.queued_bytes_per_pipe[i], None) from None
        if n < sum(map(len, iov)):
            self.partial_writes += 1
        self._consume(i, n)
        if not queue:
            self.loop.remove_writer(fd)
        if self._over and self.queued_bytes < self.max_buffer / 2:
            self._over = False
            if self.on_drain is not None:
                self.on_drain()

    def _consume(self, i: int, n: int) -> None:
        """Account n bytes written from the head of pipe i's queue."""
        queue = self._queues[i]
        self.written_bytes[i] += n
        self.queued_bytes -= n
        self.queued_bytes_per_pipe[i] -= n
        done = 0
        while n:
            chunk = queue[0]
            left = len(chunk.data) - chunk.off
            if n >= left:
                n -= left
                done += chunk.records
                queue.popleft()
                continue
            chunk.off += n
            count, chunk.rec_off = _complete_records(chunk.data, chunk.rec_off, chunk.off)
            chunk.records -= count
            done += count
            break
        self.written_records[i] += done
        self.queued_records -= done

    def _error(self, i: int, exc: OSError, nbytes: int, records: int | None) -> PipeError:
        what = f"{nbytes} bytes" + ("" if records is None else f" ({records} records)")
        if exc.errno == errno.EPIPE:
            return PipeError(f"pipe {i}: no reader left (EPIPE); {what} not written")
        return PipeError(f"pipe {i}: write failed ({exc.strerror}); {what} not written")

    # -- back-pressure, shutdown ----------------------------------------------------------------
    def over_limit(self) -> bool:
        """True while queued_bytes >= max_buffer: the caller should stop reading its socket."""
        if self.queued_bytes >= self.max_buffer:
            self._over = True
            return True
        return False

    def flush(self, timeout: float | None) -> bool:
        """Block until every queue is written or `timeout` seconds pass; True if all written.

        For shutdown: polls the write ends itself, without the loop. Raises PipeError on EPIPE.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        index = {fd: i for i, fd in enumerate(self.fds)}
        poller = select.poll()
        watched: set[int] = set()
        while True:
            pending = {self.fds[i] for i, q in enumerate(self._queues) if q}
            if not pending:
                return True
            for fd in pending - watched:
                poller.register(fd, select.POLLOUT)
            for fd in watched - pending:
                poller.unregister(fd)
            watched = pending
            if deadline is None:
                wait_ms = None
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait_ms = math.ceil(left * 1000)
            for fd, _ in poller.poll(wait_ms):
                self._write_queued(index[fd])

    def close(self) -> None:
        """Stop watching and close the write ends. Whatever is still queued stays in the counters."""
        if self._closed:
            return
        self._closed = True
        for i, fd in enumerate(self.fds):
            if self._queues[i]:
                self.loop.remove_writer(fd)
            os.close(fd)

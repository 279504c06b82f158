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

Back-pressure: over_limit() says the caller should stop reading its socket (the bytes queued in
memory >= max_buffer); once they have drained below max_buffer/2, on_drain() is called once.

Spilling (given spools, tb.pipes.spool): a run that would queue behind a pipe while the memory
queues hold max_buffer goes to that pipe's spool file instead, and so does every later run for the
pipe until its spool is empty again. The pipe's order is memory queue, then spool, then newer
runs: when its memory queue runs low, whole segments are read back from the spool and queued
behind it, and a pipe whose spool holds anything always has a memory queue (so a direct write can
never overtake the spool). Spooled bytes and records are part of queued_bytes and
queued_records (they are routed and not yet written), and spool_bytes says how much of that is on
disk. When the spool refuses a run (--max-spill reached, or the file system failed), the run is
kept in memory (behind the spool file if it holds anything, so order is kept), spill_refused says
why, and over_limit() holds once memory reaches max_buffer: the caller's fallback (pause) applies.
Nothing is dropped. Without spools none of this runs: a queued run costs one test more.

Splicing (Linux vmsplice): a run that lies in an output buffer the writer handed out
(output_buffer) is not copied into the pipe: the pipe takes references to its pages, and the
reader's read copies from them (the kernel's copy on write, ~60% of a big batch's write cost,
is gone). Such a buffer must not change until every byte spliced from it has been read, so it
carries a fence per pipe -- how many bytes had entered that pipe (`pipe_in`) once its run was in
-- and is handed out again only when each pipe's reader has consumed up to its fence (bytes in
minus FIONREAD). A pool of a few such buffers turns over batch after batch; when none is free
(a reader far behind) the caller gets None and builds its runs elsewhere, to be copied as
before. Runs shorter than SPLICE_MIN are copied too: a spliced piece fills a pipe slot (a page)
however small it is, copied bytes share pages. Queued chunks are always copies.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import math
import os
import select
import struct
import termios
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from itertools import islice

import numpy as np

from tb.loop import Loop
from tb.pipes.errors import PipeError
from tb.pipes.spool import Spool

log = logging.getLogger("tb.pipes")

__all__ = ["PipeWriter", "IOV_MAX", "SPLICE_MIN", "vmsplice_problem"]

IOV_MAX = 1024  # os.sysconf("SC_IOV_MAX") on Linux; writev refuses more buffers (EINVAL)
_HEADER = struct.Struct("<I")
SPLICE_MIN = 16 << 10  # shorter runs are copied (a spliced piece takes a whole pipe slot)
SPLICE_POOL = 3  # output buffers at most; beyond, runs are copied until one is consumed
_SPLICE_F_NONBLOCK = 0x02


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _load_vmsplice():
    try:
        fn = ctypes.CDLL(None, use_errno=True).vmsplice
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_uint]
    fn.restype = ctypes.c_ssize_t
    return fn


_vmsplice = _load_vmsplice()


def vmsplice_problem() -> str:
    """'' if vmsplice moves bytes into a pipe here (tried for real), else what went wrong."""
    if _vmsplice is None:
        return "libc has no vmsplice"
    data = bytearray(b"tb" * 4096)
    r, w = os.pipe()
    try:
        iov = _Iovec(ctypes.addressof(ctypes.c_char.from_buffer(data)), len(data))
        n = _vmsplice(w, ctypes.byref(iov), 1, _SPLICE_F_NONBLOCK)
        if n < 0:
            return f"vmsplice failed: {os.strerror(ctypes.get_errno())}"
        got = os.read(r, len(data))
        return "" if n == len(data) and got == data else "vmsplice moved other bytes"
    finally:
        os.close(r)
        os.close(w)


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


def unread_bytes(fd: int) -> int:
    """How many bytes wait in the pipe whose read end is `fd` (FIONREAD)."""
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return struct.unpack("i", buf)[0]


def _read_exactly(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = os.read(fd, left)  # the read end is blocking and holds n bytes: no wait
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _first_boundary(data: bytes, end: int) -> int:
    """Smallest p such that data[p:end] is a whole chain of records, each a JSON object.

    A record header is a u32 length; JSON text never holds a raw NUL, so a chain of plausible
    headers that lands exactly on `end` does not happen by chance inside a torn record's bytes.
    """
    unpack = _HEADER.unpack_from
    for p in range(0, end + 1):
        pos = p
        while pos + 5 <= end and data[pos + 4] == 0x7B:  # "{"
            pos += 4 + unpack(data, pos)[0]
        if pos == end:
            return p
    return end


def _detach(run: Buffer, start: int) -> memoryview:
    """run[start:] as a view that stays valid after the caller reuses or releases its buffer.

    Pinned by test_writer.py::test_queued_data_does_not_depend_on_the_callers_buffer."""
    if isinstance(run, bytes):
        return memoryview(run)[start:]
    if isinstance(run, memoryview) and isinstance(run.obj, bytes):
        return run[start:]  # bytes cannot change; a slice outlives release() of the parent view
    return memoryview(bytes(memoryview(run)[start:]))


def _round_up(n: int) -> int:
    return (n + (1 << 20) - 1) & ~((1 << 20) - 1)  # whole MiB: fewer regrowths


class _Pinned:
    """An output buffer of the splice pool and where its spliced bytes end in each pipe."""

    __slots__ = ("buf", "view", "fences")

    def __init__(self, size: int) -> None:
        self.buf = np.empty(size, dtype=np.uint8)
        self.view: np.ndarray | None = None  # what was handed out last (runs are views of it)
        self.fences: dict[int, int] = {}  # pipe -> its pipe_in once this buffer's run was in


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
        splice: bool = True,
        spools: list[Spool] | None = None,
        max_spill: int = 1 << 33,
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
        self.writes = 0  # write/writev/vmsplice syscalls made
        self.eagain = 0  # writes refused because the pipe was full
        self.partial_writes = 0  # writes the kernel took only part of
        # splicing: the bytes resync wrote back into each pipe (with written_bytes, all that
        # ever entered it: pipe_in), the pool, the buffer handed out last
        self.splice = splice and _vmsplice is not None
        self.spliced_bytes = 0
        self.rewritten = [0] * n
        self._pool: list[_Pinned] = []
        self._handed: _Pinned | None = None
        self._iov = _Iovec()
        # spilling (see the module docstring): None without spools
        self._spools = spools
        self._spill_run = self._spill if spools else None
        self.max_spill = max_spill
        self.spool_bytes = 0  # bytes in the spool files not read back (part of queued_bytes)
        self.spilled_bytes = 0  # bytes ever appended to a spool
        self.spilled_records = 0
        self.spill_refused = ""  # why runs are kept in memory though spilling is on ('' if not)
        self._spill_failed = ""  # a spool write failed: no appends until the spools are empty
        self._spill_s = 0.0
        self._spilling_since: float | None = None
        self._behind: list[deque[_Chunk]] = [deque() for _ in range(n)]  # after a spool file
        self._behind_bytes = [0] * n
        # read back this much at once, when a pipe's memory queue is shorter than that
        self._refill_size = max(64 << 10, min(4 << 20, max_buffer // (4 * max(1, n))))

    # -- splicing -------------------------------------------------------------------------------
    def output_buffer(self, n: int) -> np.ndarray | None:
        """n bytes to build the next batch's runs in, so that they can be spliced; None if the
        writer does not splice or no buffer of its pool is free (build them elsewhere).

        The runs must be submitted before the next call (which takes this buffer back unless
        submit spliced from it)."""
        self._handed = None
        if not self.splice or n < SPLICE_MIN:  # (no run of a smaller batch would be spliced)
            return None
        for k, pinned in enumerate(self._pool):  # oldest first: the likeliest consumed
            if pinned.fences and not self._consumed(pinned.fences):
                continue
            pinned.fences = {}
            if len(pinned.buf) < n:
                pinned.buf = np.empty(_round_up(n), dtype=np.uint8)
            self._pool.append(self._pool.pop(k))
            break
        else:
            if len(self._pool) >= SPLICE_POOL:
                return None
            pinned = _Pinned(_round_up(n))
            self._pool.append(pinned)
        self._handed = pinned
        pinned.view = pinned.buf[:n]
        return pinned.view

    @property
    def pipe_in(self) -> list[int]:
        """The bytes that ever entered each pipe: written, and written back by resync."""
        return [w + r for w, r in zip(self.written_bytes, self.rewritten, strict=True)]

    def _consumed(self, fences: dict[int, int]) -> bool:
        """Whether every pipe's reader has read up to its fence."""
        written, rewritten, fds = self.written_bytes, self.rewritten, self.fds
        for i, fence in fences.items():
            if written[i] + rewritten[i] - unread_bytes(fds[i]) < fence:
                return False
        return True

    def _splice(self, fd: int, run: memoryview) -> int:
        """vmsplice run into the pipe (no copy); the bytes taken. BlockingIOError if full."""
        iov = self._iov
        iov.base = ctypes.addressof(ctypes.c_char.from_buffer(run))
        iov.len = len(run)
        n = _vmsplice(fd, ctypes.byref(iov), 1, _SPLICE_F_NONBLOCK)
        while n < 0 and ctypes.get_errno() == errno.EINTR:  # (os.write retries too: PEP 475)
            n = _vmsplice(fd, ctypes.byref(iov), 1, _SPLICE_F_NONBLOCK)
        if n >= 0:
            return n
        err = ctypes.get_errno()
        if err == errno.EAGAIN:
            raise BlockingIOError(err, os.strerror(err))
        if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM):  # refused here: copy from now on
            self.splice = False  # (the pool stays: pipes may hold pages spliced before)
            return os.write(fd, run)
        raise OSError(err, os.strerror(err))

    # -- submitting -----------------------------------------------------------------------------
    def submit(
        self,
        runs: Sequence[Buffer | None],
        counts: Sequence[int],
        used: Sequence[int] | None = None,
    ) -> None:
        """Write runs[i] (counts[i] complete records) to pipe i; queue what the pipe cannot take.

        At most one write syscall per non-empty pipe. `used`, if given, lists the pipes with a
        run (a small batch touches few of many pipes: no loop over the others). The caller may
        reuse its buffers as soon as this returns. Raises PipeError if a pipe is broken (EPIPE: no
        read end open anywhere); the other pipes' runs are still written or queued first.
        """
        if self._closed:
            raise PipeError("the pipe writer is closed")
        if len(runs) != len(self.fds) or len(counts) != len(self.fds):
            raise ValueError(f"need {len(self.fds)} runs and counts, got {len(runs)}/{len(counts)}")
        error: PipeError | None = None
        pinned = self._handed
        spliceable = pinned.view if pinned is not None else None
        # (locals: a quiet feed's batch is a few small runs, and its time is per bytecode)
        fds, queues, spill = self.fds, self._queues, self._spill_run
        written_bytes, written_records, write = self.written_bytes, self.written_records, os.write
        writes = 0
        for i in range(len(runs)) if used is None else used:
            run = runs[i]
            if not run:
                continue
            if queues[i]:
                if spill is None:
                    self._enqueue(i, _detach(run, 0), 0, counts[i])  # behind what is queued
                else:
                    spill(i, run, counts[i])  # behind what is queued, or in its spool
                continue
            size = len(run)
            writes += 1
            try:
                if (
                    size >= SPLICE_MIN
                    and type(run) is memoryview
                    and run.obj is spliceable
                    and self.splice
                ):
                    n = self._splice(fds[i], run)
                    if self.splice:
                        self.spliced_bytes += n
                        pinned.fences[i] = written_bytes[i] + self.rewritten[i] + n
                else:
                    n = write(fds[i], run)
            except BlockingIOError:
                self.eagain += 1
                n = 0
            except OSError as exc:
                error = error or self._error(i, exc, len(run), counts[i])
                continue
            written_bytes[i] += n
            if n == size:
                written_records[i] += counts[i]
                continue
            self._short(i, run, n, counts[i])
        self.writes += writes
        if self.queued_bytes - self.spool_bytes >= self.max_buffer:
            self._over = True
        if error is not None:
            raise error

    def submit_small(self, runs: list, counts: list[int], used: list[int]) -> None:
        """submit() for a small batch: runs[i] for i in `used` are bytes or bytearrays (never
        spliced). The same writes, queueing, counters and errors in fewer steps (a trickle's
        receive: its time is per bytecode)."""
        if self._closed:
            raise PipeError("the pipe writer is closed")
        if self.queued_bytes:  # some pipe has a queue: runs may have to wait behind it
            self.submit(runs, counts, used)
            return
        error: PipeError | None = None
        fds = self.fds
        written_bytes, written_records, write = self.written_bytes, self.written_records, os.write
        self.writes += len(used)
        for i in used:
            run = runs[i]
            try:
                n = write(fds[i], run)
            except BlockingIOError:
                self.eagain += 1
                n = 0
            except OSError as exc:
                error = error or self._error(i, exc, len(run), counts[i])
                continue
            written_bytes[i] += n
            if n == len(run):
                written_records[i] += counts[i]
                continue
            self._short(i, run, n, counts[i])
        if self.queued_bytes - self.spool_bytes >= self.max_buffer:
            self._over = True
        if error is not None:
            raise error

    def _short(self, i: int, run: Buffer, n: int, records: int) -> None:
        """Pipe i took n of run's bytes (a partial write, or none): queue the rest."""
        if n:
            self.partial_writes += 1
        done, boundary = _complete_records(run, 0, n)  # walks only the written prefix
        self.written_records[i] += done
        self._enqueue(i, _detach(run, boundary), n - boundary, records - done)

    def _enqueue(self, i: int, data: memoryview, off: int, records: int) -> None:
        queue = self._queues[i]
        if not queue:
            self.loop.add_writer(self.fds[i], self._on_writable[i])
        queue.append(_Chunk(data, off, records))
        left = len(data) - off
        self.queued_bytes += left
        self.queued_bytes_per_pipe[i] += left
        self.queued_records += records

    # -- spilling -------------------------------------------------------------------------------
    def _spill(self, i: int, run: Buffer, records: int) -> None:
        """Queue `run` behind pipe i's queue: in memory while the memory queues hold less than
        max_buffer and the pipe's spool is empty, else in its spool (or, if the spool refuses, in
        memory behind the spool's contents)."""
        spool = self._spools[i]
        n = len(run)
        if self._behind[i]:  # the spool refused earlier: what follows waits behind that
            self._keep_behind(i, run, records)
            return
        if not spool.size and self.queued_bytes - self.spool_bytes + n <= self.max_buffer:
            self._enqueue(i, _detach(run, 0), 0, records)
            return
        why = self._spill_failed
        if not why and self.spool_bytes + n > self.max_spill:
            why = f"the spool is full (--max-spill {self.max_spill >> 20} MiB)"
        if not why:
            try:
                spool.append(run, records)
            except OSError as exc:
                why = self._spill_failed = f"cannot write {spool.path}: {exc.strerror or exc}"
                log.error(
                    "%s; keeping what the spool cannot take in memory (up to --max-buffer, then"
                    " the socket pauses); nothing is dropped",
                    why,
                )
            else:
                if not self.spool_bytes:
                    self._spilling_since = time.monotonic()
                self.spool_bytes += n
                self.spilled_bytes += n
                self.spilled_records += records
                self.queued_bytes += n
                self.queued_bytes_per_pipe[i] += n
                self.queued_records += records
                if not any(self._behind_bytes):
                    self.spill_refused = ""
                return
        self.spill_refused = why
        if spool.size:
            self._keep_behind(i, run, records)
        else:
            self._enqueue(i, _detach(run, 0), 0, records)

    def _keep_behind(self, i: int, run: Buffer, records: int) -> None:
        """Keep `run` in memory after what pipe i's spool file holds."""
        data = _detach(run, 0)
        self._behind[i].append(_Chunk(data, 0, records))
        n = len(data)
        self._behind_bytes[i] += n
        self.queued_bytes += n
        self.queued_bytes_per_pipe[i] += n
        self.queued_records += records
        self.spill_refused = self.spill_refused or "the spool refused earlier records"

    def _refill(self, i: int) -> None:
        """Pipe i's memory queue runs low: queue the oldest of its spool behind it (whole
        segments), then what was kept behind the spool once the spool is empty."""
        spool, queue = self._spools[i], self._queues[i]
        low = self._refill_size
        while (
            self.queued_bytes_per_pipe[i] - spool.size - self._behind_bytes[i] < low
        ):  # (the bytes of the memory queue)
            if spool.size:
                try:
                    data, records = spool.read(low)
                except OSError as exc:
                    raise PipeError(
                        f"pipe {i}: cannot read its spool {spool.path} back"
                        f" ({exc.strerror or exc}); {spool.records} records not written"
                    ) from None
                self.spool_bytes -= len(data)
                queue.append(_Chunk(memoryview(data), 0, records))
                if not self.spool_bytes:
                    self._spill_s += time.monotonic() - self._spilling_since
                    self._spilling_since = None
                    self._spill_failed = ""  # (the disk may have room again: try it next time)
                continue
            behind = self._behind[i]
            if behind:
                queue.extend(behind)
                behind.clear()
                self._behind_bytes[i] = 0
            break

    def _drained(self) -> None:
        """The memory queues drained below half the bound: let the spool be tried again."""
        if not any(self._behind_bytes):
            self.spill_refused = ""  # (the next refusal says so again)
        if not self.spool_bytes:
            self._spill_failed = ""  # (the disk may have room again)

    @property
    def spill_s(self) -> float:
        """Seconds during which some spool held records (so far)."""
        since = self._spilling_since
        return self._spill_s + (time.monotonic() - since if since is not None else 0.0)

    @property
    def spool_bytes_per_pipe(self) -> list[int]:
        """Bytes in each pipe's spool file, not read back."""
        return [s.size for s in self._spools] if self._spools else [0] * len(self.fds)

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
        if self._spools is not None and self.queued_bytes_per_pipe[i]:
            self._refill(i)
        if not queue:
            self.loop.remove_writer(fd)
        if self._over and self.queued_bytes - self.spool_bytes < self.max_buffer / 2:
            self._over = False
            if self._spools is not None:
                self._drained()
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

    # -- a reader died ---------------------------------------------------------------------------
    def resync(self, i: int, read_fd: int) -> int:
        """Make pipe i start on a record boundary again after its reader died; return records lost.

        The balancer holds its own copy of every read end, so what the dead reader left unread is
        still in the pipe: FIONREAD tells how much. Those bytes are read out, the torn tail of the
        record the reader died inside (if any) is cut off, and the rest is written back, so the
        next reader starts on a boundary. If the reader had taken all of a partly written record,
        the remainder of that record is dropped from the queue instead. At most one record is lost
        per death, and it is counted (written_records includes it: it did reach the pipe).
        Pinned by tests/pipes/test_resync.py and the kill tests in tests/e2e.
        """
        fd = self.fds[i]
        unread = unread_bytes(read_fd)
        data = _read_exactly(read_fd, unread) if unread else b""
        queue = self._queues[i]
        head = queue[0] if queue else None
        # Bytes at the end of `data` that start a record whose remainder is still queued.
        partial = head.off - head.rec_off if head is not None else 0
        lost = 0
        if partial > unread:
            # The reader took the start of the record being written: drop that record's rest.
            size = 4 + _HEADER.unpack_from(head.data, head.rec_off)[0]
            skip = head.rec_off + size - head.off
            head.off += skip
            head.rec_off = head.off
            head.records -= 1
            self.queued_bytes -= skip
            self.queued_bytes_per_pipe[i] -= skip
            self.queued_records -= 1
            self.written_records[i] += 1
            if head.off == len(head.data):
                queue.popleft()
                if self._spools is not None:
                    self._refill(i)
            lost, keep = 1, b""
        else:
            boundary = len(data) - partial
            first = _first_boundary(data, boundary)
            lost = 1 if first else 0
            keep = data[first:]
        if keep:
            # The pipe is empty now and held all of it a moment ago: this write cannot be short.
            n = os.write(fd, keep)
            self.rewritten[i] += n  # (what was read out counts as consumed: splice fences hold)
            if n != len(keep):
                raise PipeError(f"pipe {i}: could not put {len(keep) - n} bytes back after resync")
        if not queue:
            self.loop.remove_writer(fd)
        return lost

    def unread_records(self, i: int, read_fd: int) -> int:
        """Read out and count the records of pipe i that reached the pipe but not a reader.

        For the end of a run, once the reader is gone: a record it took only part of counts
        too, unless it is the queue's head (then it is still in queued_records). Pinned by
        tests/pipes/test_writer.py::test_unread_records_after_the_reader_is_gone."""
        unread = unread_bytes(read_fd)
        if not unread:
            return 0
        data = _read_exactly(read_fd, unread)
        queue = self._queues[i]
        partial = queue[0].off - queue[0].rec_off if queue else 0
        if partial >= len(data):
            return 0  # only (part of) the head record is in the pipe: queued_records has it
        end = len(data) - partial
        first = _first_boundary(data, end)
        count, _ = _complete_records(data, first, end)
        return count + (1 if first else 0)

    # -- back-pressure, shutdown ----------------------------------------------------------------
    def queued_records_in(self, i: int) -> int:
        """How many records wait in pipe i's queue (and its spool)."""
        n = sum(chunk.records for chunk in self._queues[i])
        if self._spools is not None:
            n += self._spools[i].records + sum(chunk.records for chunk in self._behind[i])
        return n

    def over_limit(self) -> bool:
        """True while the bytes queued in memory reach max_buffer (and, when spilling, the spool
        refuses more): the caller should stop reading its socket."""
        if self.queued_bytes - self.spool_bytes >= self.max_buffer and (
            self._spools is None or self.spill_refused
        ):
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
        """Stop watching, close the write ends, remove the spools. Whatever is still queued (or
        spooled) stays in the counters."""
        if self._closed:
            return
        self._closed = True
        for i, fd in enumerate(self.fds):
            if self._queues[i]:
                self.loop.remove_writer(fd)
            os.close(fd)
        self.close_spools()

    def close_spools(self) -> None:
        """Remove the spool files (again: nothing)."""
        if self._spools is not None:
            if self._spilling_since is not None:
                self._spill_s = self.spill_s
                self._spilling_since = None
            for spool in self._spools:
                spool.close()

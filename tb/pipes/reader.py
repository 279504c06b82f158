"""The worker side: read [u32 LE length][JSON] records from the balancer's pipes.

One buffer per pipe. A pipe is read only when poll says it is readable, so the blocking read ends
never block (they stay blocking: each read end shares its open file description, and so
O_NONBLOCK, with the copy tb keeps to resync the pipes after a worker dies). Each read goes
straight into the free tail of the pipe's buffer (os.readv); the complete records it finishes are
handed out as memoryviews into that buffer (read_batches: no copy per record) or as bytes
(read_records: one copy each); a partial record is moved to the front before the next read.

The buffer grows only for a record bigger than itself, and never past max_record: a header
announcing more is not a record tb wrote (a pipe that is not tb's, a torn record) and is a
PipeError at once, not an allocation of gigabytes and a wait for bytes that never come.
"""

from __future__ import annotations

import os
import select
import struct
from collections.abc import Iterator, Sequence
from typing import Protocol

from tb.pipes.errors import PipeError

__all__ = [
    "pipe_fds",
    "BATCH_READ",
    "MAX_RECORD",
    "PipeBuffers",
    "check_fds",
    "fds_from_env",
    "read_batches",
    "read_records",
]

_HEADER = struct.Struct("<I")

# The largest record the reader grows its buffer for: tb's default --max-message (a record is one
# event object of a message, never more than the message).
MAX_RECORD = 16 << 20


class RecordCheck(Protocol):
    """What read_records calls on each record when asked to (tb.worker.SequenceCheck)."""

    def check(self, record: bytes | memoryview) -> None: ...


def fds_from_env() -> list[int]:
    """The read fds named by TB_PIPE_FDS; PipeError if it is missing or malformed."""
    value = os.environ.get("TB_PIPE_FDS")
    if not value:
        raise PipeError(
            "no pipes: TB_PIPE_FDS is not set; start this worker from tb "
            "(tb run URL --pipes N -- WORKER...) or pass the pipe fds as arguments"
        )
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise PipeError(f"TB_PIPE_FDS={value!r} is not a comma-separated list of fds") from None


def pipe_fds(fds: Sequence[int] | None) -> list[int]:
    """The read fds to use: `fds`, or TB_PIPE_FDS's when None; PipeError if there are none."""
    fds = fds_from_env() if fds is None else list(fds)
    if not fds:
        raise PipeError("no pipes to read")
    return fds


def check_fds(fds: Sequence[int]) -> None:
    """PipeError unless every fd is an open file descriptor."""
    for i, fd in enumerate(fds):
        if not isinstance(fd, int) or fd < 0:
            raise PipeError(f"{fd!r} is not a file descriptor")
        try:
            os.fstat(fd)
        except OSError:
            raise PipeError(f"pipe {i}: fd {fd} is not open in this process") from None


class _PipeBuffer:
    __slots__ = ("buf", "view", "start", "end")

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = 0  # first unconsumed byte
        self.end = 0  # end of data read

    def make_room(self, max_record: int) -> int:
        """Move a partial record to the front; grow if a single record needs more room.
        Returns the length the partial record announces (0 if its header is not in yet)."""
        start, end = self.start, self.end
        pending = end - start
        need = len(self.buf)
        announced = 0
        if pending >= 4:
            announced = _HEADER.unpack_from(self.buf, start)[0]
            if announced > max_record:
                raise _TooBig(announced)
            need = max(need, 4 + announced)
        if start == 0 and need <= len(self.buf):
            return announced  # room at the tail already (the caller reads only when end < len)
        if need > len(self.buf):
            # (a new buffer: views handed out of the old one stay valid, pinning it)
            grown = bytearray(max(need, 2 * len(self.buf)))
            grown[:pending] = self.view[start:end]
            self.buf = grown
            self.view = memoryview(grown)
        else:
            self.buf[:pending] = self.view[start:end]
        self.start, self.end = 0, pending
        return announced


class _TooBig(Exception):
    pass


class PipeBuffers:
    """The read side of a set of pipes: read(i) reads pipe i once and returns its complete records.

    For loops that poll the fds themselves (serve(), aread_records()); read_batches() and
    read_records() are the ready-made loop. Pipe i is fds[i]; read(i) must be called only when
    pipe i is readable (it would block otherwise)."""

    def __init__(
        self, fds: Sequence[int], *, bufsize: int = 1 << 20, max_record: int = MAX_RECORD
    ) -> None:
        self.fds = list(fds)
        check_fds(self.fds)
        self.max_record = max_record
        self._buffers = [_PipeBuffer(max(bufsize, 64)) for _ in self.fds]

    def read(self, i: int) -> list[memoryview] | None:
        """Read pipe i once; its complete records as memoryviews into its buffer, valid until the
        next read(i) (copy with bytes() to keep one). None at EOF. PipeError if the pipe ends
        inside a record, the fd is not open, or a header announces more than max_record."""
        end = self.fill(i)
        if end < 0:
            return None
        pb = self._buffers[i]
        pos = pb.start
        view = pb.view
        unpack = _HEADER.unpack_from
        records = []
        add = records.append
        while pos + 4 <= end:
            stop = pos + 4 + unpack(view, pos)[0]
            if stop > end:
                break
            add(view[pos + 4 : stop])
            pos = stop
        self.consumed(i, pos)
        return records

    def fill(self, i: int) -> int:
        """Read pipe i once into its buffer; the end of the data in it (-1 at EOF). The data from
        buffer(i)'s start to that end is for the caller to walk; consumed() says how far it got."""
        pb = self._buffers[i]
        fd = self.fds[i]
        if pb.end == len(pb.buf) or pb.start:
            try:
                pb.make_room(self.max_record)
            except _TooBig as exc:
                raise self._too_big(i, exc.args[0]) from None
        try:
            n = os.readv(fd, [pb.view[pb.end :]])
        except OSError as exc:
            raise PipeError(f"pipe {i}: cannot read fd {fd}: {exc.strerror}") from None
        if n == 0:
            if pb.end != pb.start:
                left = pb.end - pb.start
                raise PipeError(f"pipe {i} (fd {fd}) ended inside a record: {left} bytes left over")
            return -1
        pb.end += n
        return pb.end

    def buffer(self, i: int) -> tuple[memoryview, int]:
        """Pipe i's buffer and where its unconsumed data starts."""
        pb = self._buffers[i]
        return pb.view, pb.start

    def consumed(self, i: int, pos: int) -> None:
        """The records of pipe i up to buffer offset pos have been taken."""
        pb = self._buffers[i]
        end = pb.end
        if end - pos >= 4:
            announced = _HEADER.unpack_from(pb.view, pos)[0]
            if announced > self.max_record:
                raise self._too_big(i, announced)
        if pos == end:
            pb.start = pb.end = 0  # empty: next read starts at the front, no copy
        else:
            pb.start = pos

    def _too_big(self, i: int, announced: int) -> PipeError:
        return PipeError(
            f"pipe {i} (fd {self.fds[i]}): a record header announces {announced} bytes, more than "
            f"the {self.max_record}-byte limit: this is not a tb pipe, or a torn record"
        )


def _poller(fds: Sequence[int]) -> select.poll:
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return poller


# read_batches' default read size. CPython's garbage collector walks its youngest objects every
# 700 allocations and moves survivors to older generations, walked again later: a batch whose
# records, and the objects a handler makes of them (a dict and a list per decoded trade), are
# all alive at once past that threshold is walked over and over. A read of at most 32 KiB hands
# out ~280 feed records, ~560 objects once decoded: under it. The measurements behind this size
# (tools/bench_worker.py) are in docs/performance.md, "The worker side".
BATCH_READ = 32 << 10


def read_batches(
    fds: Sequence[int] | None = None,
    *,
    bufsize: int = BATCH_READ,
    max_record: int = MAX_RECORD,
    spin: bool = False,
) -> Iterator[tuple[int, list[memoryview]]]:
    """Yield (pipe_index, records) for each read that completed records, until every pipe hits EOF.

    records: memoryviews into the pipe's buffer, in pipe order, valid until the next batch is
    asked for (bytes(view) keeps one). bufsize: the most one read takes (and the buffer's size,
    grown only for a bigger record). fds: the read ends, pipe i = fds[i]; default TB_PIPE_FDS.
    spin: never sleep in poll (a core busy-polls; a record is seen microseconds after it enters
    its pipe, not after a wake-up -- what a latency measurement of the balancer wants).
    Raises PipeError if TB_PIPE_FDS is missing, an fd is not open, a pipe ends inside a record,
    or a header announces more than max_record bytes.
    """
    fds = pipe_fds(fds)
    pipes = PipeBuffers(fds, bufsize=bufsize, max_record=max_record)
    index = {fd: i for i, fd in enumerate(fds)}
    poller = _poller(fds)
    open_pipes = len(fds)
    timeout = 0 if spin else None
    read = pipes.read
    while open_pipes:
        for fd, events in poller.poll(timeout):
            i = index[fd]
            if events & select.POLLNVAL:
                raise PipeError(f"pipe {i}: fd {fd} is not open in this process")
            records = read(i)
            if records is None:
                poller.unregister(fd)
                open_pipes -= 1
            elif records:
                yield i, records


def read_records(
    fds: Sequence[int] | None = None,
    *,
    bufsize: int = 1 << 20,
    max_record: int = MAX_RECORD,
    spin: bool = False,
    sequence: RecordCheck | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Yield (pipe_index, record_json_bytes) for each complete record, until every pipe hits EOF.

    Records of one pipe come in order. sequence: an object whose check(record) is called on every
    record before it is yielded (tb.worker.SequenceCheck counts a per-symbol `q` that repeats or
    goes backwards). The other arguments and the errors are read_batches'.
    """
    fds = pipe_fds(fds)
    pipes = PipeBuffers(fds, bufsize=bufsize, max_record=max_record)
    index = {fd: i for i, fd in enumerate(fds)}
    poller = _poller(fds)
    unpack = _HEADER.unpack_from
    check = sequence.check if sequence is not None else None
    open_pipes = len(fds)
    timeout = 0 if spin else None
    # The record walk is read_batches' without the list: a third faster when a copy per record
    # is wanted anyway (tools/bench_worker.py).
    while open_pipes:
        for fd, events in poller.poll(timeout):
            i = index[fd]
            if events & select.POLLNVAL:
                raise PipeError(f"pipe {i}: fd {fd} is not open in this process")
            end = pipes.fill(i)
            if end < 0:
                poller.unregister(fd)
                open_pipes -= 1
                continue
            view, pos = pipes.buffer(i)
            while pos + 4 <= end:
                stop = pos + 4 + unpack(view, pos)[0]
                if stop > end:
                    break
                record = bytes(view[pos + 4 : stop])  # one copy, straight out of the buffer
                if check is not None:
                    check(record)
                yield i, record
                pos = stop
            pipes.consumed(i, pos)

"""The worker side: read [u32 LE length][JSON] records from the balancer's pipes.

One buffer per pipe. A pipe is read only when poll says it is readable, so the blocking read ends
never block; each read goes straight into the free tail of the pipe's buffer (os.readv), complete
records are sliced off the front, and a partial record is moved to the front before the next read
(the buffer grows only for a record bigger than itself).
"""

from __future__ import annotations

import os
import select
import struct
from collections.abc import Iterator, Sequence

from tb.pipes.errors import PipeError

__all__ = ["read_records", "fds_from_env"]

_HEADER = struct.Struct("<I")


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


class _PipeBuffer:
    __slots__ = ("buf", "view", "start", "end")

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = 0  # first unconsumed byte
        self.end = 0  # end of data read

    def make_room(self) -> None:
        """Move a partial record to the front; grow if a single record needs more room."""
        start, end = self.start, self.end
        pending = end - start
        need = len(self.buf)
        if pending >= 4:
            need = max(need, 4 + _HEADER.unpack_from(self.buf, start)[0])
        if start == 0 and need <= len(self.buf):
            return  # room at the tail already (the caller reads only when end < len)
        if need > len(self.buf):
            grown = bytearray(max(need, 2 * len(self.buf)))
            grown[:pending] = self.view[start:end]
            self.view.release()
            self.buf = grown
            self.view = memoryview(grown)
        else:
            self.buf[:pending] = self.view[start:end]
        self.start, self.end = 0, pending


def read_records(
    fds: Sequence[int] | None = None, *, bufsize: int = 1 << 20, spin: bool = False
) -> Iterator[tuple[int, bytes]]:
    """Yield (pipe_index, record_json_bytes) for each complete record, until every pipe hits EOF.

    fds: the read ends, pipe i = fds[i]; default TB_PIPE_FDS. Records of one pipe come in order.
    spin: never sleep in poll (a core busy-polls; a record is seen microseconds after it enters
    its pipe, not after a wake-up -- what a latency measurement of the balancer wants).
    Raises PipeError if TB_PIPE_FDS is missing, or a pipe ends inside a record.
    """
    fds = fds_from_env() if fds is None else list(fds)
    if not fds:
        raise PipeError("no pipes to read")
    buffers = [_PipeBuffer(max(bufsize, 64)) for _ in fds]
    index = {fd: i for i, fd in enumerate(fds)}
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    unpack = _HEADER.unpack_from
    open_pipes = len(fds)
    timeout = 0 if spin else None
    while open_pipes:
        for fd, events in poller.poll(timeout):
            i = index[fd]
            if events & select.POLLNVAL:
                raise PipeError(f"pipe {i}: fd {fd} is not open in this process")
            pb = buffers[i]
            if pb.end == len(pb.buf) or pb.start:
                pb.make_room()
            n = os.readv(fd, [pb.view[pb.end :]])
            if n == 0:
                poller.unregister(fd)
                open_pipes -= 1
                if pb.end != pb.start:
                    left = pb.end - pb.start
                    raise PipeError(
                        f"pipe {i} (fd {fd}) ended inside a record: {left} bytes left over"
                    )
                continue
            end = pb.end + n
            pos = pb.start
            view = pb.view
            while pos + 4 <= end:
                stop = pos + 4 + unpack(view, pos)[0]
                if stop > end:
                    break
                yield i, bytes(view[pos + 4 : stop])  # one copy, straight out of the buffer
                pos = stop
            pb.start, pb.end = pos, end
            if pos == end:
                pb.start = pb.end = 0  # empty: next read starts at the front, no copy

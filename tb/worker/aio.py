"""aread_records(): the pipes as an async iterator for asyncio workers.

Each read end is watched with loop.add_reader. When one is readable its reader is taken off the
loop and the pipe is queued; the iterator reads a queued pipe once (PipeBuffers.read, which
cannot block: the pipe is readable), hands out its complete records, and puts the reader back.
So a pipe is read only when ready, a busy pipe cannot starve the others (the queue is FIFO), and
the consumer's own awaits run between records. The fds stay blocking (they share their open file
description, and so O_NONBLOCK, with the copies tb keeps to resync the pipes).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence

from tb.pipes.errors import PipeError
from tb.pipes.reader import MAX_RECORD, PipeBuffers, pipe_fds

__all__ = ["aread_records"]


async def aread_records(
    fds: Sequence[int] | None = None, *, bufsize: int = 1 << 20, max_record: int = MAX_RECORD
) -> AsyncIterator[tuple[int, bytes]]:
    """Yield (pipe_index, record_json_bytes) on the running loop until every pipe hits EOF.

    Records of one pipe come in order. The arguments and errors are those of read_records();
    an fd that is not open is a PipeError as well."""
    fds = pipe_fds(fds)
    pipes = PipeBuffers(fds, bufsize=bufsize, max_record=max_record)
    loop = asyncio.get_running_loop()
    ready: deque[int] = deque()
    wake = asyncio.Event()
    watched: set[int] = set()

    def on_readable(i: int) -> None:
        loop.remove_reader(fds[i])
        watched.discard(i)
        ready.append(i)
        wake.set()

    def watch(i: int) -> None:
        try:
            loop.add_reader(fds[i], on_readable, i)
        except (OSError, ValueError):
            raise PipeError(f"pipe {i}: fd {fds[i]} is not open in this process") from None
        watched.add(i)

    try:
        for i in range(len(fds)):
            watch(i)
        live = len(fds)
        while live:
            if not ready:
                wake.clear()
                await wake.wait()
                continue
            i = ready.popleft()
            records = pipes.read(i)
            if records is None:
                live -= 1
                continue
            for record in records:
                yield i, bytes(record)
            watch(i)
    finally:
        for i in watched:
            loop.remove_reader(fds[i])

"""aread_records on an asyncio loop over real pipes: order, interleaving, EOF, bad fds."""

from __future__ import annotations

import asyncio
import os
import random
import struct

import pytest

from tb.pipes import PipeError
from tb.worker import aread_records


def encode(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def test_records_of_every_pipe_in_order_while_the_writer_runs_on_the_same_loop(pipes):
    """The writer is a task on the same loop: the reader must yield to it (a blocking read
    would hang the test), and pieces cut anywhere must come out whole and in order."""
    rng = random.Random(3)
    pairs = [os.pipe() for _ in range(3)]
    pipes.extend(fd for pair in pairs for fd in pair)
    sent = [[b'{"pipe":%d,"k":%d,"x":"%s"}' % (i, k, b"y" * rng.randint(0, 500)) for k in range(300)]
            for i in range(3)]  # fmt: skip
    streams = [b"".join(map(encode, s)) for s in sent]
    for _, w in pairs:
        os.set_blocking(w, False)

    async def writer() -> None:
        pos = [0, 0, 0]
        while any(p < len(s) for p, s in zip(pos, streams, strict=True)):
            i = rng.randrange(3)
            n = rng.randint(1, 3000)
            try:
                pos[i] += os.write(pairs[i][1], streams[i][pos[i] : pos[i] + n])
            except BlockingIOError:
                pass  # (full: the reader's turn)
            await asyncio.sleep(0)
        for _, w in pairs:
            os.close(w)
            pipes.remove(w)

    async def main() -> list[list[bytes]]:
        task = asyncio.create_task(writer())
        got: list[list[bytes]] = [[], [], []]
        async for pipe, record in aread_records([r for r, _ in pairs], bufsize=256):
            got[pipe].append(record)
        await task
        return got

    assert asyncio.run(main()) == sent


def test_a_closed_fd_and_a_bad_record_are_pipe_errors(pipes):
    r, w = os.pipe()
    os.close(r)

    async def drain(fds, **kw):
        return [x async for x in aread_records(fds, **kw)]

    with pytest.raises(PipeError, match=f"pipe 0: fd {r} is not open"):
        asyncio.run(drain([r]))
    os.close(w)
    r, w = os.pipe()
    pipes.extend([r, w])
    os.write(w, encode(b"{}") + struct.pack("<I", 10**9))
    with pytest.raises(PipeError, match="announces 1000000000 bytes"):
        asyncio.run(drain([r]))

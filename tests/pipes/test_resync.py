"""PipeWriter.resync: after a reader dies at any byte, the next reader starts on a record boundary."""

from __future__ import annotations

import os
import random
import struct

import pytest

from tb.loop.epoll import EpollLoop
from tb.pipes import PipeWriter, open_pipes


def records(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [
        b'{"ev":"T","sym":"S%d","q":%d,"pad":"%s"}'
        % (rng.randrange(50), k, b"x" * rng.randrange(0, 300))
        for k in range(n)
    ]


def run_of(recs: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(r)) + r for r in recs)


def parse(stream: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(stream):
        (n,) = struct.unpack_from("<I", stream, pos)
        out.append(stream[pos + 4 : pos + 4 + n])
        pos += 4 + n
    assert pos == len(stream), "stream ends inside a record"
    return out


def drain(read_fd: int, writer: PipeWriter) -> bytes:
    """Read everything: the pipe and whatever the writer still has queued."""
    got = bytearray()
    os.set_blocking(read_fd, False)
    try:
        while True:
            try:
                chunk = os.read(read_fd, 1 << 20)
            except BlockingIOError:
                chunk = b""
            got += chunk
            if not chunk and not writer.queued_bytes:
                return bytes(got)
            if writer.queued_bytes:
                writer._write_queued(0)
    finally:
        os.set_blocking(read_fd, True)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("pipe_size", [65536, None])
def test_resync_after_a_reader_dies_anywhere(seed, pipe_size):
    rng = random.Random(seed)
    ps = open_pipes(1, pipe_size)
    loop = EpollLoop()
    try:
        writer = PipeWriter(loop, ps.write_fds)
        recs = records(2000, seed)
        stream = run_of(recs)
        writer.submit([stream], [len(recs)])
        in_pipe = writer.written_bytes[0]
        # The "dead worker" read some prefix of what reached the pipe, then vanished.
        taken = rng.choice([0, in_pipe, rng.randrange(0, in_pipe + 1)])
        consumed = os.read(ps.read_fds[0], taken) if taken else b""
        while len(consumed) < taken:
            consumed += os.read(ps.read_fds[0], taken - len(consumed))
        lost = writer.resync(0, ps.read_fds[0])
        rest = drain(ps.read_fds[0], writer)
        got = parse(rest)  # the next reader sees whole records only
        # Boundaries in the original stream, to know what the dead reader completed.
        bounds, pos = [], 0
        for r in recs:
            bounds.append(pos)
            pos += 4 + len(r)
        done = sum(1 for b, r in zip(bounds, recs, strict=True) if b + 4 + len(r) <= taken)
        torn = 0 if taken in bounds or taken == len(stream) else 1
        assert lost == torn
        assert got == recs[done + torn :]
        assert writer.queued_records == 0 and writer.queued_bytes == 0
        assert sum(writer.written_records) == len(recs)
    finally:
        for fd in ps.read_fds:
            os.close(fd)
        writer.close()
        loop.close()

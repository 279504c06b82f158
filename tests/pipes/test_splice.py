"""PipeWriter's splicing against real pipes: an output buffer is handed out again only once every
byte spliced from it has been read, so what a reader gets is what was submitted."""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys

import pytest

from tb.loop.epoll import EpollLoop
from tb.pipes import PipeWriter
from tb.pipes.writer import SPLICE_MIN, SPLICE_POOL, vmsplice_problem

pytestmark = pytest.mark.skipif(bool(vmsplice_problem()), reason="no vmsplice here")

RUN = 20000  # bytes per pipe per batch: spliced (>= SPLICE_MIN), three batches fit a 64 KiB pipe


@pytest.fixture
def loop():
    lp = EpollLoop()
    yield lp
    lp.close()


def records(batch: int, pipe: int, size: int) -> bytes:
    """Records (`size` bytes, or a few more) that name their batch and pipe: a page reused too
    early shows."""
    out = bytearray()
    k = 0
    while len(out) < size:
        body = b'{"b":%d,"p":%d,"k":%d,"pad":"' % (batch, pipe, k)
        left = size - len(out) - 4 - len(body) - 2
        body += b"x" * max(0, min(left, 80)) + b'"}'
        out += struct.pack("<I", len(body)) + body
        k += 1
    return bytes(out)


def drain(fd: int) -> bytes:
    out = bytearray()
    while select.select([fd], [], [], 0)[0]:
        out += os.read(fd, 1 << 20)
    return bytes(out)


def catch_up(w: PipeWriter, read_fds: list[int], got: list[bytearray]) -> None:
    """Read until the writer's queues are written and the pipes are empty."""
    for _ in range(200):
        for i, fd in enumerate(read_fds):
            got[i] += drain(fd)
        if w.flush(0.01):
            break
    for i, fd in enumerate(read_fds):
        got[i] += drain(fd)
    assert not w.queued_bytes


def test_spliced_runs_arrive_unchanged_while_the_pool_turns_over(loop, pipes):
    ps = pipes(2, 65536)
    w = PipeWriter(loop, ps.write_fds)
    assert SPLICE_MIN <= RUN
    sent = [bytearray(), bytearray()]
    got = [bytearray(), bytearray()]
    handed = refused = 0
    for batch in range(40):
        if batch % 5 == 4:  # the reader catches up now and then
            catch_up(w, ps.read_fds, got)
        runs_bytes = [records(batch, i, RUN) for i in range(2)]
        sizes = [len(r) for r in runs_bytes]
        buf = w.output_buffer(sum(sizes))
        if buf is None:  # every pooled buffer still has unread bytes in a pipe
            refused += 1
            runs = runs_bytes
        else:
            handed += 1
            buf[: sizes[0]] = memoryview(runs_bytes[0])
            buf[sizes[0] :] = memoryview(runs_bytes[1])
            view = memoryview(buf)
            runs = [view[: sizes[0]], view[sizes[0] :]]
        w.submit(runs, [0, 0])
        for i in range(2):
            sent[i] += runs_bytes[i]
    catch_up(w, ps.read_fds, got)
    assert got == sent
    assert w.spliced_bytes > 10 * RUN and handed > SPLICE_POOL and refused > 0
    assert w.written_bytes == [len(s) for s in sent] == w.pipe_in


def test_a_buffer_comes_back_once_read(loop, pipes):
    ps = pipes(1, 1 << 18)  # (room for every run: a spliced run takes whole pages)
    w = PipeWriter(loop, ps.write_fds)
    bufs = []
    for batch in range(SPLICE_POOL):
        buf = w.output_buffer(RUN)
        buf[:] = memoryview(records(batch, 0, RUN))
        w.submit([memoryview(buf)], [0])
        bufs.append(buf)
    assert w.spliced_bytes == SPLICE_POOL * RUN
    assert w.output_buffer(RUN) is None  # all three still in the pipe
    first = os.read(ps.read_fds[0], RUN)  # the first batch read: its buffer is free
    assert first == records(0, 0, RUN)
    again = w.output_buffer(RUN)
    assert again is not None and again.base is bufs[0].base


def test_short_runs_and_foreign_buffers_are_copied(loop, pipes):
    ps = pipes(1, 65536)
    w = PipeWriter(loop, ps.write_fds)
    assert w.output_buffer(SPLICE_MIN - 1) is None  # a batch with no run long enough
    buf = w.output_buffer(RUN)
    buf[: SPLICE_MIN - 1] = memoryview(records(0, 0, SPLICE_MIN - 1))
    w.submit([memoryview(buf)[: SPLICE_MIN - 1]], [0])  # a short run of a pooled buffer
    w.submit([records(1, 0, RUN)], [0])  # not the pool's
    assert w.spliced_bytes == 0 and w.written_bytes == [SPLICE_MIN - 1 + RUN]
    off = PipeWriter(loop, ps.write_fds, splice=False)
    assert off.output_buffer(RUN) is None


def test_tb_check_tries_vmsplice():
    assert vmsplice_problem() == ""
    proc = subprocess.run(
        [sys.executable, "-m", "tb", "check", "--json"], capture_output=True, text=True, timeout=60
    )
    entry = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "splice")
    assert entry["on"] is True and "vmsplice" in entry["detail"]

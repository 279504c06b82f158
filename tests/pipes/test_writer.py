"""PipeWriter against real pipes: in-process readers for the exact cases, a slow child for volume."""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import random
import select
import struct
import sys
import threading
import time

import pytest

from tb.loop.epoll import EpollLoop
from tb.pipes import IOV_MAX, PipeError, PipeWriter, spawn_worker

SMALL = 65536


def records_in(stream: bytes) -> list[int]:
    """End offsets of the records of a stream."""
    ends, pos = [], 0
    while pos < len(stream):
        pos += 4 + struct.unpack_from("<I", stream, pos)[0]
        ends.append(pos)
    return ends


def drain(fd: int) -> bytes:
    """Read everything available now from a blocking read end, without blocking."""
    out = bytearray()
    while select.select([fd], [], [], 0)[0]:
        out += os.read(fd, 1 << 20)
    return bytes(out)


def complete(ends: list[int], written: int) -> int:
    return bisect.bisect_right(ends, written)


@pytest.fixture
def loop():
    lp = EpollLoop()
    yield lp
    lp.close()


def test_partial_write_is_queued_and_resumed_in_order(loop, pipes, pool):
    ps = pipes(1, SMALL)
    recs = pool(1, n=1200)
    first = b"".join(recs[:800])
    second = b"".join(recs[800:])
    w = PipeWriter(loop, ps.write_fds)
    w.submit([first], [800])
    assert w.writes == 1 and w.partial_writes == 1
    assert w.written_bytes == [SMALL]
    ends = records_in(first + second)
    assert w.written_records == [complete(ends, SMALL)]
    assert w.queued_bytes == w.queued_bytes_per_pipe[0] == len(first) - SMALL
    assert w.queued_records == 800 - w.written_records[0]
    w.submit([second], [len(recs) - 800])  # queued behind: no syscall
    assert w.writes == 1
    assert w.queued_records == len(recs) - w.written_records[0]
    got = bytearray()
    deadline = time.monotonic() + 10
    while w.queued_bytes and time.monotonic() < deadline:
        got += drain(ps.read_fds[0])
        before = w.writes
        loop.poll(0.1)
        assert w.writes - before <= 1
        assert w.written_records[0] == complete(ends, w.written_bytes[0])
        assert w.queued_records == len(recs) - w.written_records[0]
    got += drain(ps.read_fds[0])
    assert bytes(got) == first + second
    assert w.written_records == [len(recs)] and w.queued_records == 0 and w.queued_bytes == 0
    assert loop._writers == {}  # unregistered once empty


def test_full_pipe_counts_eagain(loop, pipes, frame):
    ps = pipes(1, SMALL)
    os.write(ps.write_fds[0], b"f" * SMALL)
    w = PipeWriter(loop, ps.write_fds)
    rec = frame(b'{"ev":"T","sym":"A"}')
    w.submit([rec * 3], [3])
    assert (w.writes, w.eagain, w.written_bytes, w.queued_records) == (1, 1, [0], 3)
    assert ps.write_fds[0] in loop._writers
    assert drain(ps.read_fds[0]) == b"f" * SMALL
    loop.poll(1)
    assert drain(ps.read_fds[0]) == rec * 3
    assert w.written_records == [3] and w.writes == 2


@pytest.mark.parametrize("fill", [0, 1, 3, 4, 5, 100, 4095, 4096, 4097, 30000, SMALL - 1])
def test_records_counted_at_any_split(loop, pipes, pool, fill):
    """Whatever the kernel takes, written_records counts exactly the records wholly in the pipe."""
    ps = pipes(1, SMALL)
    if fill:
        os.write(ps.write_fds[0], b"f" * fill)
    run = b"".join(pool(fill)[:400])
    ends = records_in(run)
    w = PipeWriter(loop, ps.write_fds)
    w.submit([memoryview(run)], [len(ends)])
    assert w.written_records[0] == complete(ends, w.written_bytes[0])
    assert drain(ps.read_fds[0])[fill:] == run[: w.written_bytes[0]]
    while w.queued_bytes:
        loop.poll(1)
        assert w.written_records[0] == complete(ends, w.written_bytes[0])
        drain(ps.read_fds[0])
    assert w.written_records[0] == len(ends)


def test_queued_data_does_not_depend_on_the_callers_buffer(loop, pipes, pool):
    """The caller reuses its arena after submit: what was queued must not change with it."""
    ps = pipes(2, SMALL)
    recs = pool(2)
    run = b"".join(recs)
    arena = bytearray(len(run) * 2)
    w = PipeWriter(loop, ps.write_fds)
    arena[: len(run)] = run
    view = memoryview(arena)
    w.submit([view[: len(run)], None], [len(recs), 0])  # partial write: remainder queued
    arena[: len(run)] = run
    w.submit([None, view[: len(run)]], [0, len(recs)])
    w.submit([view[: len(run)], b""], [len(recs), 0])  # appended behind the queue
    view.release()
    arena[:] = b"\xff" * len(arena)  # reuse
    got = [bytearray(), bytearray()]
    while w.queued_bytes:
        for i in range(2):
            got[i] += drain(ps.read_fds[i])
        loop.poll(0.1)
    for i in range(2):
        got[i] += drain(ps.read_fds[i])
    assert got == [run + run, run]
    assert w.written_records == [2 * len(recs), len(recs)]


def test_one_writev_takes_at_most_iov_max_chunks(loop, pipes, frame):
    ps = pipes(1, SMALL)
    os.write(ps.write_fds[0], b"f" * SMALL)
    w = PipeWriter(loop, ps.write_fds)
    recs = [frame(b'{"n":%d}' % k) for k in range(IOV_MAX * 2 + 10)]
    for rec in recs:
        w.submit([rec], [1])
    assert w.writes == 1 and w.queued_records == len(recs)
    drain(ps.read_fds[0])
    loop.poll(1)
    assert w.writes == 2 and w.written_records == [IOV_MAX]
    got = bytearray()
    while w.queued_bytes:
        got += drain(ps.read_fds[0])
        loop.poll(1)
    got += drain(ps.read_fds[0])
    assert w.writes == 4 and bytes(got) == b"".join(recs)


def test_over_limit_and_on_drain(loop, pipes, pool):
    ps = pipes(2, SMALL)
    drained = []
    w = PipeWriter(
        loop,
        ps.write_fds,
        max_buffer=128 * 1024,
        on_drain=lambda: drained.append(w.queued_bytes),
    )
    run = b"".join(pool(3)[:500])
    n = 0
    while not w.over_limit():
        w.submit([run, run], [500, 500])
        n += 1
    assert w.queued_bytes >= w.max_buffer
    loop.poll(0)  # nothing readable drained: nothing changes
    assert drained == []
    total = 2 * n * len(run)
    got = 0
    deadline = time.monotonic() + 10
    while got < total and time.monotonic() < deadline:
        got += len(drain(ps.read_fds[0])) + len(drain(ps.read_fds[1]))
        loop.poll(0.05)
    assert got == total
    assert len(drained) == 1 and drained[0] < w.max_buffer / 2
    assert not w.over_limit()
    assert w.written_records == [500 * n, 500 * n]


def test_flush(loop, pipes, pool):
    ps = pipes(2, SMALL)
    w = PipeWriter(loop, ps.write_fds)
    run = b"".join(pool(4)) * 8
    w.submit([run, run], [4096, 4096])
    t0 = time.monotonic()
    assert w.flush(0.2) is False  # nobody reads
    assert 0.15 < time.monotonic() - t0 < 5
    got = [bytearray(), bytearray()]

    def reader(i):
        while len(got[i]) < len(run):
            got[i] += os.read(ps.read_fds[i], 8192)
            time.sleep(0.0005)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    assert w.flush(20) is True
    for t in threads:
        t.join(10)
    assert got == [run, run] and w.queued_bytes == 0 and w.written_records == [4096, 4096]
    assert loop._writers == {}


def test_epipe_names_the_pipe_and_still_writes_the_others(loop, pipes, frame):
    ps = pipes(3, SMALL)
    os.close(ps.read_fds[1])
    w = PipeWriter(loop, ps.write_fds)
    rec = frame(b"{}")
    with pytest.raises(PipeError, match=r"pipe 1: no reader left \(EPIPE\)"):
        w.submit([rec, rec, rec], [1, 1, 1])
    assert w.written_records == [1, 0, 1]
    assert drain(ps.read_fds[2]) == rec


def test_epipe_while_draining_the_queue(loop, pipes, frame):
    ps = pipes(1, SMALL)
    os.write(ps.write_fds[0], b"f" * SMALL)
    w = PipeWriter(loop, ps.write_fds)
    w.submit([frame(b"{}")], [1])
    os.close(ps.read_fds[0])
    with pytest.raises(PipeError, match="pipe 0"):
        loop.poll(1)


def test_close(loop, pipes, frame):
    ps = pipes(1, SMALL)
    os.write(ps.write_fds[0], b"f" * SMALL)
    w = PipeWriter(loop, ps.write_fds)
    w.submit([frame(b"{}")], [1])
    w.close()
    w.close()
    assert loop._writers == {}
    with pytest.raises(OSError):
        os.fstat(ps.write_fds[0])
    assert w.queued_records == 1  # not written, and it says so
    with pytest.raises(PipeError, match="closed"):
        w.submit([frame(b"{}")], [1])


# -- volume: a slow reader in another process ---------------------------------------------------

SLOW_READER = r"""
import hashlib, json, os, select, struct, sys, time
fds = [int(x) for x in os.environ["TB_PIPE_FDS"].split(",")]
time.sleep(0.3)  # let the pipes fill and the writer queue up
state = {fd: [hashlib.sha256(), 0, 0, b""] for fd in fds}  # hash, bytes, records, partial
open_fds = set(fds)
while open_fds:
    for fd in select.select(list(open_fds), [], [])[0]:
        data = os.read(fd, 8192)
        st = state[fd]
        if not data:
            open_fds.discard(fd)
            continue
        st[0].update(data)
        st[1] += len(data)
        buf, pos = st[3] + data, 0
        while pos + 4 <= len(buf) and pos + 4 + struct.unpack_from("<I", buf, pos)[0] <= len(buf):
            pos += 4 + struct.unpack_from("<I", buf, pos)[0]
            st[2] += 1
        st[3] = buf[pos:]
    time.sleep(0.0003)
out = [{"sha256": st[0].hexdigest(), "bytes": st[1], "records": st[2], "left": len(st[3])}
       for st in (state[fd] for fd in fds)]
with open("reader.json", "w") as f:
    json.dump(out, f)
"""


@pytest.mark.parametrize("max_buffer", [1 << 30, 256 * 1024])
def test_many_megabytes_through_small_pipes_to_a_slow_reader(
    loop, pipes, pool, reap, tmp_path, max_buffer
):
    npipes, nbatches = 4, 64
    ps = pipes(npipes, SMALL)
    worker = spawn_worker([sys.executable, "-c", SLOW_READER], ps.read_fds, str(tmp_path))
    reap.append(worker)
    for fd in ps.read_fds:
        os.close(fd)
    rng = random.Random(5)
    recs = pool(5)
    drains = []
    w = PipeWriter(loop, ps.write_fds, max_buffer=max_buffer, on_drain=lambda: drains.append(1))
    arena = bytearray(4 << 20)  # > the largest batch (4 x 500 x 400 bytes)
    expect = [hashlib.sha256() for _ in range(npipes)]
    totals = [[0, 0] for _ in range(npipes)]  # bytes, records
    state = {"batches": 0, "peak": 0, "paused": 0}

    def make_batch():
        """Build one batch in the reused arena; return views into it (valid during submit only)."""
        runs, counts, pos = [], [], 0
        for i in range(npipes):
            if rng.random() < 0.15:
                runs.append(None)
                counts.append(0)
                continue
            picked = rng.choices(recs, k=rng.randint(1, 500))
            run = b"".join(picked)
            arena[pos : pos + len(run)] = run
            runs.append(memoryview(arena)[pos : pos + len(run)])
            counts.append(len(picked))
            expect[i].update(run)
            totals[i][0] += len(run)
            totals[i][1] += len(picked)
            pos += len(run)
        return runs, counts

    def produce():
        while state["batches"] < nbatches:
            if w.over_limit():
                state["paused"] += 1
                return  # on_drain resumes
            runs, counts = make_batch()
            idle = [bool(r) and w.queued_bytes_per_pipe[i] == 0 for i, r in enumerate(runs)]
            before = w.writes
            w.submit(runs, counts)
            assert w.writes - before == sum(idle)  # one write per non-empty pipe with no queue
            arena[:] = bytes(len(arena))  # the arena is reused: queued data must not care
            state["batches"] += 1
            state["peak"] = max(state["peak"], w.queued_bytes)
            loop.call_soon(produce)  # let the writer callbacks run between batches
            return
        if w.queued_bytes == 0:
            loop.stop()
        else:
            loop.call_later(0.01, produce)

    w.on_drain = lambda: (drains.append(1), loop.call_soon(produce))
    loop.call_soon(produce)
    loop.call_later(60, loop.stop)
    loop.run()
    assert state["batches"] == nbatches and w.queued_bytes == 0
    assert w.flush(10)
    w.close()
    assert worker.wait(30) == 0
    got = json.loads((tmp_path / "reader.json").read_text())
    for i in range(npipes):
        assert got[i] == {
            "sha256": expect[i].hexdigest(),
            "bytes": totals[i][0],
            "records": totals[i][1],
            "left": 0,
        }
        assert w.written_bytes[i] == totals[i][0]
        assert w.written_records[i] == totals[i][1]
    assert sum(t[0] for t in totals) > 8 << 20
    assert w.partial_writes > 0 and w.queued_records == 0
    if max_buffer < 1 << 30:
        assert state["paused"] > 0 and len(drains) >= 1
        assert state["peak"] < max_buffer + len(arena)  # over by at most one batch
    else:
        assert drains == []


def _counters(w: PipeWriter) -> tuple:
    return (w.written_bytes, w.written_records, w.queued_bytes_per_pipe, w.queued_records,
            w.writes, w.eagain, w.partial_writes, w.pipe_in)  # fmt: skip


@pytest.mark.parametrize("fill", [0, 5, SMALL - 300, SMALL])
def test_submit_small_writes_and_counts_as_submit_does(loop, pipes, pool, fill):
    """The small lane's submit_small against submit, batch after batch on twin pipes (pipe 1
    prefilled, so its writes are partial or refused and later runs queue behind): the same
    bytes in every pipe and the same counters after each batch and after draining."""
    twins = [pipes(3, SMALL), pipes(3, SMALL)]
    writers = [PipeWriter(loop, ps.write_fds) for ps in twins]
    for ps in twins:
        if fill:
            os.write(ps.write_fds[1], b"f" * fill)
    recs = pool(fill, n=60)
    rng = random.Random(fill)
    for _ in range(12):
        runs: list = [None, None, None]
        counts, used = [0, 0, 0], []
        for rec in rng.sample(recs, rng.randint(1, 6)):
            i = rng.randrange(3)
            if runs[i] is None:
                runs[i] = bytearray()
                used.append(i)
            runs[i] += rec
            counts[i] += 1
        # (as small_runs hands them over: a pipe's only record as bytes, longer runs bytearrays)
        runs = [bytes(r) if c == 1 else r for r, c in zip(runs, counts, strict=True)]
        writers[0].submit(runs, counts, used)
        writers[1].submit_small(runs, counts, used)
        assert _counters(writers[0]) == _counters(writers[1])
    if fill >= SMALL - 300:  # the case this is for: runs behind a short write or a full pipe
        assert writers[1].queued_records and writers[1].partial_writes + writers[1].eagain
    out = [[drain(fd) for fd in ps.read_fds] for ps in twins]
    for w in writers:
        deadline = time.monotonic() + 10
        while w.queued_bytes and time.monotonic() < deadline:
            loop.poll(0.1)
    for k, ps in enumerate(twins):
        for i, fd in enumerate(ps.read_fds):
            out[k][i] += drain(fd)
    assert out[0] == out[1] and _counters(writers[0]) == _counters(writers[1])
    assert writers[1].queued_bytes == 0
    assert sum(writers[1].written_records) == sum(len(records_in(o[fill if i == 1 else 0 :]))
                                                  for i, o in enumerate(out[1]))  # fmt: skip


def test_submit_small_epipe_names_the_pipe_and_still_writes_the_others(loop, pipes, frame):
    ps = pipes(3, SMALL)
    os.close(ps.read_fds[1])
    w = PipeWriter(loop, ps.write_fds)
    rec = frame(b"{}")
    with pytest.raises(PipeError, match=r"pipe 1: no reader left \(EPIPE\)"):
        w.submit_small([bytearray(rec)] * 3, [1, 1, 1], [2, 1, 0])
    assert w.written_records == [1, 0, 1]
    assert drain(ps.read_fds[0]) == drain(ps.read_fds[2]) == rec


@pytest.mark.parametrize("taken", [0, 1, 7, 1000, 5000])
def test_unread_records_after_the_reader_is_gone(loop, pipes, pool, taken):
    """At the end of a run: what reached the pipe but not a reader, in whole records, a record
    the reader took only part of counted too; the queue's head record, partly in the pipe, is
    left to queued_records."""
    ps = pipes(1, SMALL)
    recs = pool(1, n=2000)
    stream = b"".join(recs)
    w = PipeWriter(loop, ps.write_fds)
    w.submit([stream], [len(recs)])
    in_pipe = w.written_bytes[0]
    assert 0 < in_pipe < len(stream)  # a full pipe with a queue behind it
    got = os.read(ps.read_fds[0], taken) if taken else b""
    ends = records_in(stream)
    whole_in_pipe = complete(ends, in_pipe)  # records wholly in the pipe
    read_whole = complete(ends, len(got))
    # (a record the reader stopped inside is wholly in the pipe and not wholly read: counted)
    assert w.unread_records(0, ps.read_fds[0]) == whole_in_pipe - read_whole
    assert w.queued_records == len(recs) - whole_in_pipe
    assert drain(ps.read_fds[0]) == b""  # read out

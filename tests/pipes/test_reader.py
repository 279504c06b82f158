"""read_records over real pipes: every byte split, many pipes, big records, EOF, truncation."""

from __future__ import annotations

import fcntl
import os
import random
import struct
import termios
import threading
import time

import pytest

from tb.pipes import PipeError, read_records
from tb.pipes.reader import read_batches


def unread(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def feed_in_pieces(read_fd: int, write_fd: int, pieces: list[bytes]) -> threading.Thread:
    """Write each piece only after the reader has taken the previous one, then close."""

    def run():
        for piece in pieces:
            deadline = time.monotonic() + 10
            while unread(read_fd) and time.monotonic() < deadline:
                time.sleep(0.0001)
            os.write(write_fd, piece)
        deadline = time.monotonic() + 10
        while unread(read_fd) and time.monotonic() < deadline:
            time.sleep(0.0001)
        os.close(write_fd)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_every_byte_boundary(pipes, frame):
    """One byte per write, each read by the reader before the next: every split point is hit."""
    ps = pipes(1)
    payloads = [b'{"ev":"T","sym":"AAPL"}', b"{}", b"x" * 300, b'{"sym":"A"}']
    stream = b"".join(map(frame, payloads))
    t = feed_in_pieces(ps.read_fds[0], ps.write_fds[0], [bytes([b]) for b in stream])
    got = list(read_records(ps.read_fds, bufsize=64))
    t.join(10)
    assert got == [(0, p) for p in payloads]


@pytest.mark.parametrize("spin", [False, True])  # (spin: polled without sleeping)
@pytest.mark.parametrize("seed", range(5))
def test_random_splits(pipes, frame, seed, spin):
    rng = random.Random(seed)
    ps = pipes(1)
    payloads = [rng.randbytes(rng.randint(0, 200)) for _ in range(300)]
    stream = b"".join(map(frame, payloads))
    cuts = sorted(rng.sample(range(1, len(stream)), 60))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    t = feed_in_pieces(ps.read_fds[0], ps.write_fds[0], pieces)
    got = [p for _, p in read_records(ps.read_fds, bufsize=256, spin=spin)]
    t.join(10)
    assert got == payloads


def test_many_pipes_keep_per_pipe_order(pipes, frame):
    n = 16
    ps = pipes(n, 65536)
    rng = random.Random(7)
    sent = [
        [b'{"pipe":%d,"k":%d,"pad":"%s"}' % (i, k, b"p" * rng.randint(0, 3000)) for k in range(300)]
        for i in range(n)
    ]

    def writer():
        pending = [list(map(frame, s)) for s in sent]
        while any(pending):
            i = rng.randrange(n)
            if pending[i]:
                k = rng.randint(1, 20)
                blob = b"".join(pending[i][:k])
                del pending[i][:k]
                view = memoryview(blob)
                while view:
                    try:
                        view = view[os.write(ps.write_fds[i], view) :]
                    except BlockingIOError:
                        time.sleep(0.0005)
        for fd in ps.write_fds:
            os.close(fd)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    got = [[] for _ in range(n)]
    for i, rec in read_records(ps.read_fds, bufsize=4096):
        got[i].append(rec)
    t.join(10)
    assert got == sent


def test_record_bigger_than_the_buffer(pipes, frame):
    ps = pipes(1)
    big = b"B" * 200_000
    t = feed_in_pieces(
        ps.read_fds[0],
        ps.write_fds[0],
        [frame(b"{}") + frame(big)[:1000], frame(big)[1000:] + frame(b"[]")],
    )
    got = [p for _, p in read_records(ps.read_fds, bufsize=1024)]
    t.join(10)
    assert got == [b"{}", big, b"[]"]


def test_eof_on_every_pipe_ends_iteration(pipes, frame):
    ps = pipes(3)
    os.write(ps.write_fds[1], frame(b"{}"))
    for fd in ps.write_fds:
        os.close(fd)
    assert list(read_records(ps.read_fds)) == [(1, b"{}")]


@pytest.mark.parametrize(
    "tail, left", [(b"\x05\x00", 2), (b"\x05\x00\x00\x00abc", 7), (b"\x00\x00\x00\x00\x09", 1)]
)
def test_truncated_record_at_eof(pipes, frame, tail, left):
    ps = pipes(2)
    os.write(ps.write_fds[1], frame(b"ok") + tail)
    for fd in ps.write_fds:
        os.close(fd)
    got = []
    with pytest.raises(
        PipeError,
        match=rf"pipe 1 \(fd {ps.read_fds[1]}\) ended inside a record: {left} bytes left over",
    ):
        for item in read_records(ps.read_fds):
            got.append(item)
    assert (1, b"ok") in got


def test_fds_from_the_environment(pipes, frame, monkeypatch):
    ps = pipes(2)
    monkeypatch.setenv("TB_PIPE_FDS", ",".join(map(str, ps.read_fds)))
    os.write(ps.write_fds[0], frame(b"a"))
    os.write(ps.write_fds[1], frame(b"b"))
    for fd in ps.write_fds:
        os.close(fd)
    assert sorted(read_records()) == [(0, b"a"), (1, b"b")]


def test_no_fds_says_how_to_start_the_worker(monkeypatch):
    monkeypatch.delenv("TB_PIPE_FDS", raising=False)
    with pytest.raises(PipeError, match="TB_PIPE_FDS is not set; start this worker from tb"):
        next(read_records())
    monkeypatch.setenv("TB_PIPE_FDS", "3,x")
    with pytest.raises(PipeError, match="not a comma-separated list"):
        next(read_records())


def test_closed_fd_is_reported(pipes):
    ps = pipes(1)
    fd = ps.read_fds[0]
    os.close(fd)
    with pytest.raises(PipeError, match="not open"):
        next(read_records([fd]))


@pytest.mark.parametrize("seed", range(3))
def test_batches_hold_the_same_records_as_read_records(pipes, frame, seed):
    """read_batches: every record once, in order, as views that stay valid until the next batch."""
    rng = random.Random(seed)
    ps = pipes(1)
    payloads = [rng.randbytes(rng.randint(0, 300)) for _ in range(400)]
    stream = b"".join(map(frame, payloads))
    cuts = sorted(rng.sample(range(1, len(stream)), 50))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    t = feed_in_pieces(ps.read_fds[0], ps.write_fds[0], pieces)
    got, sizes = [], []
    for pipe, records in read_batches(ps.read_fds, bufsize=512):
        assert pipe == 0 and records and all(isinstance(r, memoryview) for r in records)
        got.extend(bytes(r) for r in records)
        sizes.append(len(records))
    t.join(10)
    assert got == payloads
    assert len(sizes) > 1


def test_a_header_over_the_limit_is_an_error_at_once(pipes, frame):
    """A length no tb record has (a pipe that is not tb's, a torn record): PipeError while the
    pipe is still open, not a wait for gigabytes that never come."""
    ps = pipes(1)
    os.write(ps.write_fds[0], frame(b'{"ok":1}') + struct.pack("<I", 0x7FFFFFF0) + b'{"x')
    got = []
    with pytest.raises(PipeError, match=r"pipe 0 .*announces 2147483632 bytes, more than"):
        for item in read_records(ps.read_fds, max_record=1 << 20):
            got.append(item)
    assert got == [(0, b'{"ok":1}')]
    # the limit applies to a header that arrives alone too
    ps = pipes(1)
    os.write(ps.write_fds[0], struct.pack("<I", 5000))
    with pytest.raises(PipeError, match="announces 5000 bytes, more than the 4096-byte limit"):
        next(read_batches(ps.read_fds, max_record=4096))


def test_a_record_up_to_the_limit_is_read(pipes, frame):
    ps = pipes(1)
    big = b"b" * 5000
    t = feed_in_pieces(ps.read_fds[0], ps.write_fds[0], [frame(big)[:3000], frame(big)[3000:]])
    assert list(read_records(ps.read_fds, bufsize=1024, max_record=5000)) == [(0, big)]
    t.join(10)


def test_not_an_fd_is_reported():
    with pytest.raises(PipeError, match="-1 is not a file descriptor"):
        next(read_records([-1]))
    with pytest.raises(PipeError, match="no pipes to read"):
        next(read_batches([]))


def test_sequence_check_sees_every_record(pipes, frame):
    class Seen:
        def __init__(self):
            self.records = []

        def check(self, record):
            self.records.append(bytes(record))

    ps = pipes(2)
    os.write(ps.write_fds[0], frame(b"a") + frame(b"b"))
    os.write(ps.write_fds[1], frame(b"c"))
    for fd in ps.write_fds:
        os.close(fd)
    seen = Seen()
    got = [r for _, r in read_records(ps.read_fds, sequence=seen)]
    assert sorted(seen.records) == sorted(got) == [b"a", b"b", b"c"]

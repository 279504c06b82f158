"""The profiling worker counts exactly what was written, at every read split."""

from __future__ import annotations

import fcntl
import json
import os
import random
import struct
import subprocess
import sys
import threading
import time

import pytest

from tb.pipes.count_worker import read_progress


def record(rng: random.Random, q: int) -> bytes:
    body = b'{"ev":"T","sym":"S%d","q":%d,"pad":"%s"}' % (
        rng.randrange(99),
        q,
        b"y" * rng.choice([0, 1, 200, 251, 252, 300, 5000]),
    )
    return struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("mode", [[], ["--verify"], ["--latency"], ["--latency", "--spin"]])
def test_counts_every_record_across_odd_splits(tmp_path, mode):
    rng = random.Random(7)
    pipes = [os.pipe() for _ in range(3)]
    streams = [
        b"".join(record(rng, q) for q in range(i * 10000, i * 10000 + 3000)) for i in range(3)
    ]
    out = tmp_path / "out.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tb.pipes.count_worker", "--out", str(out), "--progress", str(tmp_path / "p"), *mode,
         *(str(r) for r, _ in pipes)],
        pass_fds=[r for r, _ in pipes],
    )  # fmt: skip
    for r, _ in pipes:
        os.close(r)

    def feed(w: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            step = rng.choice([1, 2, 3, 5, 4096, 65536])
            pos += os.write(w, data[pos : pos + step])
        os.close(w)

    threads = [
        threading.Thread(target=feed, args=(w, s)) for (_, w), s in zip(pipes, streams, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert proc.wait(60) == 0
    summary = json.loads(out.read_text())
    assert summary["per_pipe"] == [3000, 3000, 3000]
    assert summary["bytes"] == [len(s) for s in streams]
    total, first, last, per_pipe = read_progress((tmp_path / "p").read_bytes(), 3)
    assert total == 9000 and per_pipe == [3000, 3000, 3000] and 0 < first <= last
    if "--latency" in mode:
        assert sorted(q for q, _ in summary["stamps"]) == sorted(
            q for i in range(3) for q in range(i * 10000, i * 10000 + 3000)
        )


@pytest.mark.parametrize("spin", [False, True])
def test_latency_stamps_are_the_reads_that_completed_each_record(tmp_path, spin):
    """A record's stamp is taken after its last byte entered the pipe, and long before the next
    write: it is the read that completed it, however the record was split."""
    pipes = [os.pipe() for _ in range(2)]
    out, ready = tmp_path / "out.json", tmp_path / "progress"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tb.pipes.count_worker", "--out", str(out), "--latency",
         "--progress", str(ready),
         *(["--spin"] if spin else []), *(str(r) for r, _ in pipes)],
        pass_fds=[r for r, _ in pipes],
    )  # fmt: skip
    for r, _ in pipes:
        os.close(r)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:  # (made just before it reads)
        time.sleep(0.01)
    rng = random.Random(3)
    sent = {}  # q -> (ns before its last byte was written, ns when the next write began)
    for q in range(40):
        data = record(rng, q)
        w = pipes[q % 2][1]
        cut = rng.randrange(1, len(data))  # the record in two writes, 20 ms apart
        os.write(w, data[:cut])
        time.sleep(0.02)
        before = time.monotonic_ns()
        os.write(w, data[cut:])
        time.sleep(0.02)
        sent[q] = (before, time.monotonic_ns())
    for _, w in pipes:
        os.close(w)
    assert proc.wait(60) == 0
    stamps = dict(json.loads(out.read_text())["stamps"])
    assert sorted(stamps) == list(range(40))
    for q, (before, after) in sent.items():
        assert before <= stamps[q] <= after, q


def test_a_full_pipe_does_not_delay_the_stamps_of_another(tmp_path):
    """Pipe A holds ~70,000 records when one record enters pipe B: B's stamp is taken when B is
    read, in the same round as A's first read, not after A's records have been parsed (which
    takes this worker more than 100 ms; a stamp that waited for them is what this catches)."""
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    fcntl.fcntl(a_w, fcntl.F_SETPIPE_SZ, 1 << 20)
    many = b"".join(struct.pack("<I", len(b := b'{"q":%d}' % q)) + b for q in range(100, 70100))
    assert os.write(a_w, many) == len(many)  # (all of it in the pipe before the worker starts)
    body = b'{"q":1}'
    os.write(b_w, struct.pack("<I", len(body)) + body)
    written = time.monotonic_ns()
    out = tmp_path / "out.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tb.pipes.count_worker", "--out", str(out), "--latency", "--spin",
         str(a_r), str(b_r)],
        pass_fds=[a_r, b_r],
    )  # fmt: skip
    os.close(a_r)
    os.close(b_r)
    time.sleep(1)
    os.close(a_w)
    os.close(b_w)
    assert proc.wait(60) == 0
    stamps = dict(json.loads(out.read_text())["stamps"])
    assert len(stamps) == 70001
    assert stamps[1] <= min(stamps.values()) + 25_000_000  # within 25 ms of the first read
    assert stamps[1] >= written

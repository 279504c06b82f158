"""The profiling worker counts exactly what was written, at every read split."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import threading

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

"""A slow worker: the other pipes keep flowing, nothing is lost, the buffer bound holds."""

from __future__ import annotations

import json
import re
import sys

import pytest
from harness import Replay, expected_events, run_tb

from tb.capture import read_capture
from tb.ingest import MAX_RECV

SLOW_WORKER = """
import json, os, select, struct, sys, time
out, fds = sys.argv[1], [int(a) for a in sys.argv[2:]]
slow = fds[0]
arrivals = {i: [] for i in range(len(fds))}
bufs = {fd: b"" for fd in fds}
live = set(fds)
while live:
    ready, _, _ = select.select(list(live), [], [])
    for fd in ready:
        if fd == slow:
            time.sleep(0.002)  # pipe 0 is read slowly, in small pieces
        chunk = os.read(fd, 4096 if fd == slow else 1 << 20)
        if not chunk:
            live.discard(fd)
            continue
        buf = bufs[fd] + chunk
        pos = 0
        while pos + 4 <= len(buf):
            (n,) = struct.unpack_from("<I", buf, pos)
            if pos + 4 + n > len(buf):
                break
            arrivals[fds.index(fd)].append((time.monotonic(), buf[pos + 4 : pos + 4 + n].decode()))
            pos += 4 + n
        bufs[fd] = buf[pos:]
json.dump(arrivals, open(out, "w"))
"""


@pytest.mark.parametrize("loop", ["epoll", "uring"])
def test_slow_pipe_does_not_stall_the_others_and_the_bound_holds(tmp_path, loop):
    cap = tmp_path / "feed.tbcap"
    proc = run_tb(
        [
            "gen",
            str(cap),
            "--profile",
            "burst",
            "--trades",
            "60000",
            "--symbols",
            "500",
            "--seed",
            "2",
        ]
    )
    assert proc.returncode == 0
    payloads = list(read_capture(str(cap)))
    worker = tmp_path / "slow.py"
    worker.write_text(SLOW_WORKER)
    results = {}
    for bound in ("64M", "1M"):
        replay = Replay(str(cap), "--close-after")
        out = tmp_path / f"arrivals-{bound}.json"
        try:
            run = run_tb(
                ["run", replay.url, "--pipes", "4", "--key", "k", "--once", "--pipe-size", "64K",
                 "--max-buffer", bound, "--stats", "0.2", "--loop", loop, "--workdir", str(tmp_path),
                 "--", sys.executable, str(worker), str(out)],
                timeout=120,
            )  # fmt: skip
        finally:
            replay.stop()
        assert run.returncode == 0, run.stderr[-3000:]
        arrivals = {int(k): v for k, v in json.loads(out.read_text()).items()}
        got = sorted(json.loads(raw)["q"] for v in arrivals.values() for _, raw in v)
        assert got == sorted(o["q"] for o in expected_events(payloads)), "every trade, once"
        results[bound] = (run.stderr, arrivals)

    # Under a roomy bound the fast pipes finish while the slow one is far from done.
    stderr, arrivals = results["64M"]
    slow = [t for t, _ in arrivals[0]]
    fast_done = max(t for i in (1, 2, 3) for t, _ in arrivals[i])
    assert fast_done < slow[len(slow) // 2], "the fast pipes waited for the slow one"
    # Under a tight bound tb pauses the socket, and the queue never passes bound + one receive.
    stderr, _ = results["1M"]
    queued = [int(m) for m in re.findall(r"queued_bytes=(\d+)", stderr)]
    assert queued and max(queued) <= (1 << 20) + MAX_RECV
    final = [ln for ln in stderr.splitlines() if "tb: final" in ln][0]
    assert int(re.search(r"pauses=(\d+)", final).group(1)) >= 1
    assert "pausing the socket" in stderr


def test_on_overflow_exit_when_the_worker_stops_reading(tmp_path, replay_factory):
    replay = replay_factory("--gen-profile", "burst", "--gen-trades", "200000")
    run = run_tb(
        ["run", replay.url, "--pipes", "2", "--key", "k", "--pipe-size", "64K", "--max-buffer", "1M",
         "--on-overflow", "exit", "--overflow-timeout", "1", "--shutdown-timeout", "1",
         "--workdir", str(tmp_path), "--", sys.executable, "-c", "import time; time.sleep(60)"],
        timeout=60,
    )  # fmt: skip
    assert run.returncode == 7, run.stderr[-2000:]
    assert "cannot keep up" in run.stderr and "Traceback" not in run.stderr


IGNORES_PIPE_0 = """
import os, select, struct, sys, time
out, fds = sys.argv[1], [int(a) for a in sys.argv[2:]]
records, bufs, live = 0, {fd: b"" for fd in fds}, set(fds)
until = time.monotonic() + 3.0  # pipe 0 is left alone for 3 s, then read like the rest
while live:
    watch = [fd for fd in live if fd != fds[0] or time.monotonic() >= until]
    ready, _, _ = select.select(watch, [], [], 0.1)
    for fd in ready:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            live.discard(fd)
            continue
        buf, pos = bufs[fd] + chunk, 0
        while pos + 4 <= len(buf) and pos + 4 + struct.unpack_from("<I", buf, pos)[0] <= len(buf):
            pos += 4 + struct.unpack_from("<I", buf, pos)[0]
            records += 1
        bufs[fd] = buf[pos:]
open(out, "w").write(str(records))
"""


def paced_run(tmp_path, replay_factory, worker_source: str, trades: int, rate: int, *args: str):
    """tb run --once, 2 pipes of 64 KiB, --stall-warning 1, over a burst feed of `trades` paced
    at `rate`; the worker (worker_source) gets its output file's path before the pipes."""
    replay = replay_factory("--gen-profile", "burst", "--gen-trades", str(trades), "--rate",
                            str(rate), "--close-after")  # fmt: skip
    worker, out = tmp_path / "worker.py", tmp_path / "worker.out"
    worker.write_text(worker_source)
    run = run_tb(
        ["run", replay.url, "--pipes", "2", "--key", "k", "--once", "--pipe-size", "64K",
         "--stall-warning", "1", *args, "--workdir", str(tmp_path),
         "--", sys.executable, str(worker), str(out)],
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stderr, out.read_text()


def test_a_pipe_its_reader_leaves_alone_is_named_and_nothing_is_lost(tmp_path, replay_factory):
    # The worker is alive but does not read pipe 0: nothing else would say so until the whole
    # --max-buffer filled. tb names the pipe after --stall-warning, and again once it moves.
    # (The feed is paced over 5 s: the stall happens while streaming, not in the final flush.)
    stderr, records = paced_run(tmp_path, replay_factory, IGNORES_PIPE_0, 100000, 20000)
    warned = re.findall(
        r"pipe (\d) \(worker fd \d+\): its reader has taken nothing for (\d+) s; (\d+) records",
        stderr,
    )
    assert len(warned) == 1 and warned[0][0] == "0", stderr[-3000:]
    assert 1 <= int(warned[0][1]) < 3 and int(warned[0][2]) > 0
    assert re.search(r"pipe 0 \(worker fd \d+\) (is being read again|drained)", stderr)
    final = dict(kv.split("=", 1) for kv in stderr.splitlines()[-1].split() if "=" in kv)
    assert final["routed"] == final["written"] == "100000"
    assert records == "100000"


def test_no_stall_warning_for_a_worker_that_reads_every_pipe(tmp_path, replay_factory):
    # pipe 0 read slowly (~2 MB/s) under a feed paced faster than that for 2.5 s: its queue
    # stays up for seconds while streaming, but it moves, so it is not a stall
    stderr, arrivals = paced_run(
        tmp_path, replay_factory, SLOW_WORKER, 150000, 60000, "--stats", "0.5"
    )
    streaming = stderr.split("connection ended")[0]
    queued = re.findall(r"queue_per_pipe=0:(\d+)", streaming)
    assert len(queued) >= 3, streaming[-3000:]  # (the premise: pipe 0 queued for > 1 s)
    assert "its reader has taken nothing" not in stderr, stderr[-3000:]
    assert sum(len(v) for v in json.loads(arrivals).values()) == 150000

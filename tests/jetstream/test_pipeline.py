"""tb run -> tb publish -> JetStream -> tb consume -> a worker, with real processes and a real
nats-server on 127.0.0.1; and the same with each process killed mid-stream.

The feeds here are 100k-200k trades, not the 1M of a real open, to keep each test within
seconds on a 2-core machine; the burst profile still sends 300-400 trades per message.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import pytest
from harness import Replay, run_tb
from nats_harness import (
    Proc,
    count_lines,
    expected_pipes,
    log_worker,
    logged,
    wait_until,
    worker_pipes,
)

pytestmark = pytest.mark.slow

NPIPES = 4


@pytest.fixture(scope="module")
def burst(tmp_path_factory):
    path = tmp_path_factory.mktemp("nats") / "burst.tbcap"
    proc = run_tb(["gen", str(path), "--trades", "200000", "--symbols", "3000", "--seed", "7"])
    assert proc.returncode == 0, proc.stderr
    return path, expected_pipes(path, NPIPES)


@pytest.fixture(scope="module")
def paced(tmp_path_factory):
    path = tmp_path_factory.mktemp("nats") / "paced.tbcap"
    proc = run_tb(["gen", str(path), "--trades", "100000", "--symbols", "2000", "--seed", "8"])
    assert proc.returncode == 0, proc.stderr
    return path, expected_pipes(path, NPIPES)


def start_run(replay_url: str, server_url: str, *publish_args: str) -> Proc:
    """tb run with tb publish as its worker, once the stream is there (tb publish makes it)."""
    run = Proc(
        ["run", replay_url, "--key", "k", "--pipes", str(NPIPES), "--once", "--"]
        + [sys.executable, "-m", "tb", "publish", server_url, *publish_args]
    )
    wait_until(lambda: "tb.publish INFO: publishing" in run.text, 30, "tb publish to start")
    return run


def start_consume(server_url: str, workdir, out, *args: str, partitions: str = "0-3") -> Proc:
    return Proc(
        ["consume", server_url, "--partitions", partitions, "--workdir", str(workdir), *args]
        + ["--", *log_worker(out)]
    )


def stop(proc: Proc) -> int:
    proc.signal(signal.SIGTERM)
    return proc.wait(30)


def pids(proc: Proc, what: str) -> list[int]:
    return [
        int(m.group(1))
        for ln in proc.lines
        if what in ln
        for m in [re.search(r"pid (\d+)", ln)]
        if m
    ]


def settle(out, timeout: float = 30.0) -> None:
    """Wait until the worker's log stops growing for a second."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = count_lines(out)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > 1.5:
            return
        time.sleep(0.1)


def assert_in_order_once(got: list[list[bytes]], want: list[list[bytes]]) -> list[int]:
    """Each partition's records: no duplicates, a subsequence of the feed's order. Returns the
    bytes missing per partition."""
    missing = []
    for p, (g, w) in enumerate(zip(got, want, strict=True)):
        assert len(set(g)) == len(g), f"partition {p}: a record reached the worker twice"
        it = iter(w)
        assert all(r in it for r in g), f"partition {p}: records out of feed order"
        missing.append(sum(map(len, w)) - sum(map(len, g)))
    return missing


def test_every_trade_once_in_order_across_two_consumers(tmp_path, nats_server, burst):
    capture, want = burst
    total = sum(map(len, want))
    out = tmp_path / "worker.jsonl"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    replay = Replay(str(capture), "--close-after")
    try:
        run = start_run(replay.url, nats_server.url)
        # two tb consume processes split the partitions of one stream
        first = start_consume(nats_server.url, tmp_path / "a", out, partitions="0,1")
        second = start_consume(nats_server.url, tmp_path / "b", out, partitions="2-3")
        assert run.wait(60) == 0, run.text[-3000:]
        wait_until(lambda: count_lines(out) >= total, 60, f"{total} records at the worker")
        assert stop(first) == 0, first.text[-2000:]
        assert stop(second) == 0, second.text[-2000:]
    finally:
        replay.stop()
    published = run.final("tb publish: final")
    assert int(published["acked"]) == total and published["unacked"] == "0"
    # bytes identical, per-symbol feed order, each symbol on its one partition (= its pipe)
    assert worker_pipes(logged(out), NPIPES) == want
    consumed = [first.final("tb consume: final"), second.final("tb consume: final")]
    assert sum(int(c["consumed"]) for c in consumed) == total
    assert all(c["undelivered_at_exit"] == "0" and c["skipped"] == "0" for c in consumed)


def test_nats_server_killed_and_restarted_mid_stream(tmp_path, nats_server, paced):
    capture, want = paced
    total = sum(map(len, want))
    out = tmp_path / "worker.jsonl"
    replay = Replay(str(capture), "--close-after", "--rate", "40000")
    try:
        run = start_run(replay.url, nats_server.url, "--window", "8", "--message-size", "16K")
        consume = start_consume(nats_server.url, tmp_path, out)
        wait_until(lambda: count_lines(out) >= total // 4, 30, "a quarter of the feed")
        nats_server.kill()
        time.sleep(1.0)
        nats_server.start()  # the same port and store
        assert run.wait(90) == 0, run.text[-3000:]
        wait_until(lambda: count_lines(out) >= total, 60, f"{total} records at the worker")
        settle(out, 5)
        assert stop(consume) == 0, consume.text[-2000:]
    finally:
        replay.stop()
    # nothing lost, nothing twice, in order: every resend was a duplicate the server dropped,
    # every redelivery one the pipe had
    assert worker_pipes(logged(out), NPIPES) == want
    published = run.final("tb publish: final")
    assert int(published["acked"]) == total and int(published["disconnects"]) >= 1


def test_publish_killed_loses_at_most_its_window(tmp_path, nats_server, paced):
    capture, want = paced
    out = tmp_path / "worker.jsonl"
    replay = Replay(str(capture), "--close-after", "--rate", "40000")
    window, size = 8, 16 << 10
    try:
        run = start_run(
            replay.url, nats_server.url, "--window", str(window), "--message-size", str(size)
        )
        consume = start_consume(nats_server.url, tmp_path, out)
        total = sum(map(len, want))
        wait_until(lambda: count_lines(out) >= total // 4, 30, "a quarter of the feed")
        first = pids(run, "worker")[0]
        os.kill(first, signal.SIGKILL)  # tb run restarts it (--restart on-failure)
        assert run.wait(90) == 0, run.text[-3000:]
        settle(out)
        assert stop(consume) == 0, consume.text[-2000:]
    finally:
        replay.stop()
    assert len(pids(run, "worker")) == 2, "tb run did not restart tb publish"
    missing = assert_in_order_once(worker_pipes(logged(out), NPIPES), want)
    # what the killed publisher had read and not had acknowledged: within its window
    longest = max(len(r) for pipe in want for r in pipe) + 4
    assert sum(missing) <= window * size + NPIPES * longest, missing
    final = run.final("tb: final")
    assert final["undelivered_at_exit"] == "0"


def test_consume_killed_and_restarted_writes_nothing_twice(tmp_path, nats_server, paced):
    capture, want = paced
    total = sum(map(len, want))
    out = tmp_path / "worker.jsonl"
    limits = ["--max-buffer", "256K", "--pipe-size", "64K", "--batch", "4"]
    replay = Replay(str(capture), "--close-after", "--rate", "40000")
    try:
        run = start_run(replay.url, nats_server.url, "--message-size", "16K")
        first = start_consume(nats_server.url, tmp_path, out, *limits)
        wait_until(lambda: count_lines(out) >= total // 4, 30, "a quarter of the feed")
        first.signal(signal.SIGKILL)
        first.wait(10)
        second = start_consume(nats_server.url, tmp_path, out, *limits)
        assert run.wait(90) == 0, run.text[-3000:]
        settle(out)
        assert stop(second) == 0, second.text[-2000:]
    finally:
        replay.stop()
    missing = assert_in_order_once(worker_pipes(logged(out), NPIPES), want)
    # lost: what the killed consumer's worker had not read -- its pipes, and what was queued
    # or fetched for them (--max-buffer, plus one fetch per partition beyond it)
    bound = (256 << 10) + NPIPES * (64 << 10) + NPIPES * 4 * (16 << 10)
    assert sum(missing) <= bound, missing
    final = second.final("tb consume: final")
    assert final["undelivered_at_exit"] == "0"


def test_consumers_worker_killed_is_restarted(tmp_path, nats_server, paced):
    capture, want = paced
    total = sum(map(len, want))
    out = tmp_path / "worker.jsonl"
    replay = Replay(str(capture), "--close-after", "--rate", "40000")
    try:
        run = start_run(replay.url, nats_server.url)
        consume = start_consume(nats_server.url, tmp_path, out)
        wait_until(lambda: count_lines(out) >= total // 4, 30, "a quarter of the feed")
        os.kill(pids(consume, "worker")[0], signal.SIGKILL)
        assert run.wait(90) == 0, run.text[-3000:]
        settle(out)
        assert stop(consume) == 0, consume.text[-2000:]
    finally:
        replay.stop()
    assert len(pids(consume, "worker")) == 2, "the worker was not restarted"
    got = worker_pipes(logged(out), NPIPES)
    assert_in_order_once(got, want)
    for g, w in zip(got, want, strict=True):
        # what the dead worker had read and not logged is one run of consecutive records
        if len(g) < len(w):
            i = next((i for i, (a, b) in enumerate(zip(g, w, strict=False)) if a != b), len(g))
            assert g[i:] == w[len(w) - len(g) + i :], "records missing beyond one gap"
    final = consume.final("tb consume: final")
    assert final["worker_restarts"] == "1" and final["undelivered_at_exit"] == "0"

"""--gap-records: after a reconnect every pipe gets one tb.gap record, after the last trade of the
old connection and before the first of the new one. A raw-socket feed server on 127.0.0.1 drops
the first connection (TCP reset, or a websocket close 1001) and serves more on the next."""

from __future__ import annotations

import json
import signal
import sys
import time

import pytest
from harness import RESET, VERIFY_WORKER, LiveTb, ScriptedFeed, frame, read_log

from tb.pipes.gap import is_gap

PIPES = 3


def trades(first: int, n: int) -> str:
    syms = ["AAPL", "MSFT", "A", "NVDA", "SPY", "QQQ", "TSLA"]
    return json.dumps(
        [{"ev": "T", "sym": syms[q % 7], "i": str(q), "x": 4, "p": 1.25, "s": 5, "t": 1, "q": q}
         for q in range(first, first + n)]
    )  # fmt: skip


def run(tmp_path, feed: ScriptedFeed, want_second: int, *extra: str):
    """tb (reconnecting) until the worker has the second connection's trades; its log."""
    log = tmp_path / "log.jsonl"
    tb = LiveTb(["run", feed.url, "--pipes", str(PIPES), "--key", "k", "--workdir", str(tmp_path),
                 *extra, "--", sys.executable, VERIFY_WORKER, str(log)])  # fmt: skip
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if log.exists():
            got = [json.loads(r["raw"]) for r in read_log(log)]
            if sum(1 for o in got if o.get("q", -1) >= 100) >= want_second:
                break
        time.sleep(0.05)
    tb.proc.send_signal(signal.SIGTERM)
    assert tb.wait(30) == 0, tb.text[-3000:]
    feed.close()
    assert "Traceback" not in tb.text
    return tb, read_log(log)


CLOSE_1001 = b"\x88\x0c\x03\xe9going away"


@pytest.mark.parametrize("fault, why", [(RESET, "reset"), (CLOSE_1001, "1001 going away")],
                         ids=["reset", "close-1001"])  # fmt: skip
def test_every_pipe_gets_one_gap_between_the_two_connections(tmp_path, fault, why):
    first, second = trades(0, 40), trades(100, 40)
    feed = ScriptedFeed([frame(first.encode()), fault], [frame(second.encode())])
    started = int(time.time() * 1000)
    tb, log = run(tmp_path, feed, 40, "--gap-records")
    pipes: dict[int, list[dict]] = {}
    for r in log:
        pipes.setdefault(r["pipe"], []).append(json.loads(r["raw"]))
    assert sorted(pipes) == list(range(PIPES))
    for pipe, records in pipes.items():
        gaps = [k for k, o in enumerate(records) if o["ev"] == "tb.gap"]
        assert len(gaps) == 1, f"pipe {pipe}: {len(gaps)} gap records"
        (k,) = gaps
        gap = records[k]
        assert all(o["q"] < 100 for o in records[:k]), f"pipe {pipe}: a new trade before the gap"
        assert all(o["q"] >= 100 for o in records[k + 1 :]), f"pipe {pipe}: an old one after it"
        assert started <= gap["from"] <= gap["to"] <= int(time.time() * 1000)
        assert why in gap["reason"]
        assert set(gap) == {"ev", "from", "to", "reason"}
    assert int(tb.final()["gap_records"]) == PIPES
    final = tb.final()
    assert int(final["written"]) == int(final["routed"]) + PIPES  # routed + gap = written


def test_without_the_flag_no_gap_record_ever_appears(tmp_path):
    first, second = trades(0, 40), trades(100, 40)
    feed = ScriptedFeed([frame(first.encode()), CLOSE_1001], [frame(second.encode())])
    tb, log = run(tmp_path, feed, 40)
    assert not any(is_gap(r["raw"].encode()) for r in log)
    assert sum(1 for r in log if json.loads(r["raw"])["q"] >= 100) == 40
    assert tb.final()["gap_records"] == "0"


def test_a_gap_record_is_framed_json():
    from tb.pipes.gap import encode_gap

    rec = encode_gap(1000, 2500, 'the server closed the websocket (1001 "away")')
    body = rec[4:]
    assert int.from_bytes(rec[:4], "little") == len(body) and is_gap(body)
    assert json.loads(body) == {"ev": "tb.gap", "from": 1000, "to": 2500,
                                "reason": 'the server closed the websocket (1001 "away")'}  # fmt: skip

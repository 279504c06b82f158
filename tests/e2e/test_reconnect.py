"""Connection faults: tb reconnects, says why, and loses nothing it had fully received."""

from __future__ import annotations

import json
import signal
import sys
import time

import pytest
from harness import DROP, HANG, VERIFY_WORKER, LiveTb, ScriptedFeed, check_delivery, frame, read_log


def trades(first: int, n: int) -> str:
    syms = ["AAPL", "MSFT", "A", "NVDA", "SPY"]
    return json.dumps(
        [{"ev": "T", "sym": syms[q % 5], "i": str(q), "x": 4, "p": 1.25, "s": 5, "t": 1, "q": q}
         for q in range(first, first + n)]
    )  # fmt: skip


def run_until_delivered(tmp_path, feed: ScriptedFeed, expect: list[str], *extra: str) -> LiveTb:
    """Run tb (reconnecting, no --once) until the worker has every expected event; then SIGTERM."""
    log = tmp_path / "log.jsonl"
    tb = LiveTb(
        ["run", feed.url, "--pipes", "3", "--key", "k", "--workdir", str(tmp_path), *extra,
         "--", sys.executable, VERIFY_WORKER, str(log)]
    )  # fmt: skip
    want = sum(len(json.loads(m)) for m in expect)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= want:
            break
        if tb.proc.poll() is not None:
            break
        time.sleep(0.05)
    tb.proc.send_signal(signal.SIGTERM)
    assert tb.wait(30) == 0, tb.text[-3000:]
    feed.close()
    check_delivery(read_log(log), expect, 3)
    assert "Traceback" not in tb.text
    return tb


def test_drop_mid_frame_then_reconnect(tmp_path):
    first, second, third = trades(0, 30), trades(30, 40), trades(70, 25)
    partial = frame(third.encode())[: len(third) // 2]  # the rest never comes on this connection
    feed = ScriptedFeed(
        [frame(first.encode()), frame(second.encode()), partial, DROP], [frame(third.encode())]
    )
    tb = run_until_delivered(tmp_path, feed, [first, second, third])
    assert feed.connections >= 2
    assert "reconnecting in" in tb.text
    assert int(tb.final()["reconnects"]) >= 1


@pytest.mark.parametrize(
    "fault,why",
    [
        (b"\x8f\x00", "protocol error"),  # opcode 15: reserved
        (b"\x88\x02\x03\xe9", "closed the websocket (1001"),  # close 1001 going away
        (
            frame(b'[{"ev":"status","status":"force_disconnect","message":"bye"}]') + b"\x88\x00",
            "force_disconnect",
        ),
    ],
)
def test_garbage_or_close_then_reconnect(tmp_path, fault, why):
    first, second = trades(0, 20), trades(20, 20)
    feed = ScriptedFeed([frame(first.encode()), fault], [frame(second.encode())])
    tb = run_until_delivered(tmp_path, feed, [first, second])
    assert why in tb.text
    assert "reconnecting in" in tb.text


def test_half_open_connection_is_detected(tmp_path):
    first, second = trades(0, 20), trades(20, 20)
    feed = ScriptedFeed([frame(first.encode()), HANG], [frame(second.encode())])
    tb = run_until_delivered(
        tmp_path, feed, [first, second], "--idle-timeout", "1.5", "--ping-interval", "0.5"
    )
    assert "nothing received for" in tb.text
    assert float(tb.final()["disconnected_s"]) > 0


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_a_stop_signal_under_load_delivers_everything_received(tmp_path, replay_factory, sig):
    replay = replay_factory("--gen-profile", "burst", "--gen-trades", "300000", "--rate", "150000")
    log = tmp_path / "log.jsonl"
    worker = tmp_path / "count.py"
    worker.write_text(
        "import sys, json\nfrom tb.pipes import read_records\n"
        "n = sum(1 for _ in read_records([int(a) for a in sys.argv[2:]]))\n"
        "open(sys.argv[1], 'w').write(json.dumps(n))\n"
    )
    tb = LiveTb(["run", replay.url, "--pipes", "4", "--key", "k", "--workdir", str(tmp_path),
                 "--", sys.executable, str(worker), str(log)])  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "streaming" not in tb.text:
        time.sleep(0.05)
    time.sleep(0.8)  # mid-stream
    tb.proc.send_signal(sig)
    assert tb.wait(30) == 0, tb.text[-3000:]
    assert f"{sig.name}: stopping, flushing the pipes" in tb.text
    final = tb.final()
    routed = int(final["routed"])
    assert 0 < routed < 300000, "the signal came mid-stream"
    assert int(final["written"]) == routed and final["queued"] == "0"
    assert json.loads(log.read_text()) == routed, "the worker got every trade tb received"
    assert int(final["received"]) == routed + int(final["statuses"]) + int(
        final["dropped_no_symbol"]
    )


def test_a_second_signal_exits_at_once(tmp_path, replay_factory):
    replay = replay_factory("--gen-profile", "burst", "--gen-trades", "200000", "--rate", "20000")
    # a worker that never reads: the first SIGTERM's flush would wait for it
    tb = LiveTb(["run", replay.url, "--pipes", "2", "--key", "k", "--pipe-size", "64K",
                 "--shutdown-timeout", "60", "--workdir", str(tmp_path),
                 "--", sys.executable, "-c", "import time; time.sleep(120)"])  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "streaming" not in tb.text:
        time.sleep(0.05)
    time.sleep(1.0)
    tb.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert tb.proc.poll() is None, "still flushing to a worker that does not read"
    tb.proc.send_signal(signal.SIGTERM)
    assert tb.wait(10) == 130
    assert "second SIGTERM: exiting at once" in tb.text

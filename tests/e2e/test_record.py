"""`tb record` saves exactly the messages that carry events, and `tb replay` serves them back."""

from __future__ import annotations

import signal
import time

import pytest
from harness import LiveTb, run_tb

from tb.capture import read_capture


def test_record_then_replay_round_trip(tmp_path, replay_factory):
    cap = tmp_path / "feed.tbcap"
    assert (
        run_tb(
            ["gen", str(cap), "--profile", "quiet", "--trades", "3000", "--seed", "5"]
        ).returncode
        == 0
    )
    replay = replay_factory(str(cap), "--close-after")
    out = tmp_path / "recorded.tbcap"
    proc = run_tb(["record", replay.url + "/stocks", str(out), "--key", "k"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert list(read_capture(str(out))) == list(read_capture(str(cap)))
    assert "3000 events" in proc.stderr and "Traceback" not in proc.stderr


def test_record_stops_after_n_messages(tmp_path, replay_factory):
    replay = replay_factory("--gen-profile", "burst", "--gen-trades", "20000")
    out = tmp_path / "some.tbcap"
    proc = run_tb(["record", replay.url, str(out), "--key", "k", "--messages", "5"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(list(read_capture(str(out)))) == 5


def test_record_with_a_wrong_key_exits_3(tmp_path, replay_factory):
    replay = replay_factory("--gen-profile", "quiet", "--gen-trades", "100", "--key", "right")
    proc = run_tb(["record", replay.url, str(tmp_path / "x.tbcap"), "--key", "wrong"], timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "--key" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_record_stops_on_a_signal_with_a_whole_capture(tmp_path, replay_factory, sig):
    replay = replay_factory("--gen-profile", "quiet", "--gen-trades", "100000", "--rate", "2000")
    out = tmp_path / "live.tbcap"
    tb = LiveTb(["record", replay.url, str(out), "--key", "k"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 4096):
        time.sleep(0.05)
    tb.proc.send_signal(sig)
    assert tb.wait(30) == 0, tb.text[-3000:]
    assert "Traceback" not in tb.text
    assert len(list(read_capture(str(out)))) > 5  # every record whole (a cut one would raise)

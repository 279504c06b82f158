"""`tb record` saves exactly the messages that carry events, and `tb replay` serves them back."""

from __future__ import annotations

from harness import run_tb

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

"""`tb run --metrics`: real HTTP scrapes of a running tb against a real `tb replay`, parsed with
prometheus_client's own parser; promtool and systemd-analyze on the exposition and contrib/."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import LiveTb, Replay, run_tb
from harness import http_get as get
from harness import scrape_metrics as scrape

pytest.importorskip("prometheus_client", reason="prometheus-client is in the test extra")

from tb.counters import parse_line  # noqa: E402

ROOT = Path(__file__).parent.parent
COUNT_WORKER = [sys.executable, "-m", "tb.pipes.count_worker"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def start_tb(url: str, port: int, tmp_path, *extra: str, worker=COUNT_WORKER) -> LiveTb:
    return LiveTb(["run", url, "--pipes", "4", "--key", "k", "--metrics", f"127.0.0.1:{port}",
                   "--workdir", str(tmp_path), *extra, "--", *worker])  # fmt: skip


def test_counters_rise_and_end_equal_to_the_final_line(tmp_path):
    replay = Replay("--gen-profile", "quiet", "--gen-trades", "20000", "--rate", "20000")
    port = free_port()
    tb = start_tb(replay.url, port, tmp_path)
    try:
        first = wait_for(lambda: (m := scrape(port)).get("tb_trades_routed_total") and m, 20,
                         "trades routed")  # fmt: skip
        # the replay sends 20,000 trades and keeps the connection open: wait until all routed
        last = wait_for(
            lambda: (m := scrape(port))["tb_trades_routed_total"] == 20000 and m, 30, "all routed"
        )
        assert last["tb_trades_routed_total"] > first["tb_trades_routed_total"]
        for name in ("tb_trades_received_total", "tb_records_written_total"):
            assert last[name] >= first[name]
        assert last["tb_connected"] == 1 and last["tb_worker_up"] == 1
        assert last["tb_socket_paused"] == 0
        assert sum(v for k, v in last.items() if k.startswith("tb_pipe_share{")) == pytest.approx(1)
        assert "process_cpu_seconds_total" in last and "process_open_fds" in last
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert (status, body) == (200, "ok: streaming, worker alive\n")
        tb.proc.terminate()
        assert tb.wait(30) == 0
    finally:
        replay.stop()
    final = parse_line([ln for ln in tb.lines if "tb: final" in ln][-1])
    assert last["tb_trades_received_total"] == int(final["received"])
    assert last["tb_trades_routed_total"] == int(final["routed"])
    assert last["tb_records_written_total"] == int(final["written"])
    assert last["tb_statuses_total"] == int(final["statuses"])
    assert last["tb_reconnects_total"] == int(final["reconnects"]) == 0


def test_connected_and_healthz_follow_a_server_that_goes_away_and_comes_back(tmp_path):
    feed_port, port = free_port(), free_port()
    listen = ["--listen", f"127.0.0.1:{feed_port}", "--gen-profile", "quiet",
              "--gen-trades", "1000", "--rate", "2000"]  # fmt: skip
    replay = Replay(*listen)
    tb = start_tb(replay.url, port, tmp_path)
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 20, "healthy")
        replay.stop()
        status, body = wait_for(
            lambda: (r := get(f"http://127.0.0.1:{port}/healthz"))[0] == 503 and r, 20, "503"
        )
        assert body.startswith("reconnecting since ") and body.endswith(" s)\n"), body
        m = scrape(port)
        assert m["tb_connected"] == 0 and m["tb_reconnects_total"] >= 1
        replay = Replay(*listen)
        wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 20, "healthy again")
        m = scrape(port)
        assert m["tb_connected"] == 1 and m["tb_disconnected_seconds_total"] > 0
        tb.proc.terminate()
        assert tb.wait(30) == 0
    finally:
        replay.stop()


def test_a_paused_socket_is_unhealthy_and_says_since_when(tmp_path):
    replay = Replay("--gen-trades", "400000")
    port = free_port()
    # a worker that reads nothing: the queue reaches --max-buffer and the socket is paused
    tb = start_tb(replay.url, port, tmp_path, "--max-buffer", "4M", "--shutdown-timeout", "1",
                  worker=[sys.executable, "-c", "import time; time.sleep(60)"])  # fmt: skip
    try:
        status, body = wait_for(
            lambda: (
                (r := get(f"http://127.0.0.1:{port}/healthz"))[0] == 503 and "paused" in r[1] and r
            ),
            30,
            "a paused socket",
        )
        assert body.startswith("socket paused for backpressure since "), body
        assert scrape(port)["tb_socket_paused"] == 1
    finally:
        tb.proc.terminate()
        tb.wait(30)
        replay.stop()


def test_promtool_accepts_the_exposition(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed here (.ci/run installs Debian's prometheus)")
    replay = Replay("--gen-profile", "quiet", "--gen-trades", "2000", "--rate", "5000")
    port = free_port()
    tb = start_tb(replay.url, port, tmp_path)
    try:
        wait_for(lambda: scrape(port).get("tb_trades_routed_total"), 20, "trades routed")
        _, text = get(f"http://127.0.0.1:{port}/metrics")
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                               text=True)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        tb.proc.terminate()
        tb.wait(30)
    finally:
        replay.stop()


@pytest.mark.parametrize(
    "value, says",
    [("nonsense", "not HOST:PORT"), ("127.0.0.1:99999", "not HOST:PORT"), ("1.2.3.4", "HOST:PORT")],
)
def test_a_bad_address_is_a_usage_error(value, says):
    proc = run_tb(["run", "ws://127.0.0.1:1/", "--pipes", "1", "--key", "k", "--metrics", value,
                   "--", "true"])  # fmt: skip
    assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr


def test_a_port_in_use_is_a_clear_error_at_start(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_tb(["run", "ws://127.0.0.1:1/", "--pipes", "1", "--key", "k", "--metrics",
                       f"127.0.0.1:{port}", "--workdir", str(tmp_path), "--", "true"])  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_json_logs_are_one_object_per_line_with_the_final_counters(tmp_path):
    replay = Replay("--gen-profile", "quiet", "--gen-trades", "3000", "--rate", "10000",
                    "--close-after")  # fmt: skip
    try:
        proc = run_tb(["run", replay.url, "--pipes", "2", "--key", "secret-key", "--once",
                       "--stats", "0.05", "--log-format", "json", "--workdir", str(tmp_path),
                       "--", *COUNT_WORKER])  # fmt: skip
    finally:
        replay.stop()
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(ln) for ln in proc.stderr.splitlines()]  # (every line is JSON)
    assert {"time", "level", "logger", "event"} <= set(lines[0])
    final = [o for o in lines if o["event"] == "final"][-1]
    assert final["routed"] == 3000 and final["undelivered_at_exit"] == 0
    assert any(o["event"] == "stats" and "trades_per_s" in o for o in lines)
    assert "secret-key" not in proc.stderr


# -- the service files ---------------------------------------------------------------------------


def test_the_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    tb = shutil.which("tb") or sys.executable  # (verify wants ExecStart's program to exist)
    unit = (ROOT / "contrib" / "tb.service").read_text().replace("/usr/local/bin/tb", tb)
    assert "KillMode=mixed" in unit
    (tmp_path / "tb.service").write_text(unit)
    proc = subprocess.run([analyze, "verify", str(tmp_path / "tb.service")], capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_the_alert_rules_check_and_fire_when_they_should():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed here (.ci/run installs Debian's prometheus)")
    contrib = ROOT / "contrib"
    check = subprocess.run([promtool, "check", "rules", "prometheus-alerts.yml"], cwd=contrib,
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "prometheus-alerts.test.yml"], cwd=contrib,
                          capture_output=True, text=True)  # fmt: skip
    assert test.returncode == 0, test.stdout + test.stderr


def test_feed_lag_is_now_minus_the_newest_trades_exchange_time(tmp_path):
    from tb.capture import CaptureWriter

    # every trade of the capture was made 5 s before the test's start, by its "t" (Unix ms)
    t0 = int(time.time() * 1000) - 5000
    path = tmp_path / "old.tbcap"
    with CaptureWriter(path) as cap:
        for q in range(0, 4000, 4):
            msg = [{"ev": "T", "sym": f"S{(q + k) % 50}", "i": str(q + k), "x": 4, "p": 1.5,
                    "s": 10, "c": [12], "t": t0, "q": q + k, "z": 3} for k in range(4)]  # fmt: skip
            cap.write(json.dumps(msg, separators=(",", ":")).encode())
    replay = Replay(str(path), "--rate", "2000")
    port = free_port()
    tb = start_tb(replay.url, port, tmp_path)
    try:
        m = wait_for(lambda: (m := scrape(port)).get("tb_feed_lag_seconds") and m, 20, "a lag")
        expected = time.time() - t0 / 1000
        assert abs(m["tb_feed_lag_seconds"] - expected) < 2.0, (m["tb_feed_lag_seconds"], expected)
        time.sleep(1.0)  # the lag is read at scrape time: it grows while the market is behind
        later = scrape(port)["tb_feed_lag_seconds"]
        assert later > m["tb_feed_lag_seconds"] + 0.3
        tb.proc.terminate()
        tb.wait(30)
    finally:
        replay.stop()


def test_spilling_shows_in_the_metrics_and_agrees_with_the_final_line(tmp_path):
    replay = Replay("--gen-trades", "200000")
    port = free_port()
    spill = tmp_path / "spill"
    spill.mkdir()
    # a worker that reads nothing: past --max-buffer the records go to the spools, not a pause
    tb = start_tb(replay.url, port, tmp_path, "--max-buffer", "2M", "--on-overflow", "spill",
                  "--spill-dir", str(spill), "--shutdown-timeout", "1",
                  worker=[sys.executable, "-c", "import time; time.sleep(60)"])  # fmt: skip
    try:
        m = wait_for(
            lambda: (m := scrape(port)).get("tb_trades_routed_total") == 200000 and m, 30, "routed"
        )
        spooled = [v for k, v in m.items() if k.startswith("tb_spool_bytes{pipe=")]
        assert len(spooled) == 4 and sum(spooled) > 0
        assert m["tb_spilled_bytes_total"] >= sum(spooled)
        assert m["tb_spill_seconds_total"] > 0
        assert m["tb_socket_paused"] == 0 and m["tb_socket_pauses_total"] == 0
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        tb.proc.terminate()
        assert tb.wait(30) == 8  # (the worker never read: counted as undelivered)
    finally:
        replay.stop()
    final = parse_line([ln for ln in tb.lines if "tb: final" in ln][-1])
    assert m["tb_spilled_bytes_total"] == int(final["spilled_bytes"])

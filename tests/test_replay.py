"""tb replay over real sockets on 127.0.0.1, with the websockets library as the client."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tb.capture import CaptureWriter
from tb.gen import generate
from tb.replay import ReplayServer, count_trades
from tb.ws import client_request, parse_client_response

TIMEOUT = 10


@pytest.fixture(scope="module")
def payloads():
    return list(generate(profile="burst", trades=5_000, symbols=500, seed=3))


@pytest.fixture
def server_factory():
    made: list[ReplayServer] = []

    def make(payloads, **kw) -> ReplayServer:
        srv = ReplayServer(payloads, "127.0.0.1", 0, **kw)
        srv.start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()


def _connect(url: str, **kw):
    # max_queue=None: the client keeps reading while the test is not calling recv(), so it sees
    # our close frame instead of pausing (its flow control) until close_timeout.
    kw.setdefault("max_queue", None)
    kw.setdefault("close_timeout", TIMEOUT)
    return connect(url + "/stocks", open_timeout=TIMEOUT, **kw)


def _login(ws, key: str = "any", topics: str = "T.*") -> list:
    """Check the greeting, authenticate and subscribe like the official client; return the auth
    reply (no subscribe if it is not auth_success)."""
    assert json.loads(ws.recv(timeout=TIMEOUT)) == [
        {"ev": "status", "status": "connected", "message": "Connected Successfully"}
    ]
    ws.send(json.dumps({"action": "auth", "params": key}))  # with spaces, as the client does
    auth = json.loads(ws.recv(timeout=TIMEOUT))
    if auth[0]["status"] != "auth_success":
        return auth
    ws.send(json.dumps({"action": "subscribe", "params": topics}))
    for topic in topics.split(","):
        assert json.loads(ws.recv(timeout=TIMEOUT)) == [
            {"ev": "status", "status": "success", "message": f"subscribed to: {topic}"}
        ]
    return auth


def _receive(ws, count: int) -> list[bytes]:
    return [ws.recv(timeout=TIMEOUT).encode() for _ in range(count)]


def test_full_session_delivers_every_message_in_order(server_factory, payloads, caplog):
    caplog.set_level(logging.INFO, logger="tb.replay")
    srv = server_factory(payloads)
    with _connect(srv.url) as ws:
        auth = _login(ws, topics="T.*,T.AAPL")
        assert auth == [{"ev": "status", "status": "auth_success", "message": "authenticated"}]
        assert _receive(ws, len(payloads)) == payloads
        # the connection stays open afterwards and answers pings
        assert ws.ping().wait(TIMEOUT)
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.2)
    assert srv.wait_finished(1, TIMEOUT)
    assert srv.trades_sent == 5_000 and srv.completed == 1
    assert re.search(r"sent 5000 trades in \d+ messages \(\d+ bytes\) in [\d.]+ s to 127\.0\.0\.1:\d+",
                     caplog.text)  # fmt: skip


def test_each_connection_gets_the_whole_capture(server_factory, payloads):
    srv = server_factory(payloads)
    with _connect(srv.url) as first, _connect(srv.url) as second:
        _login(first)
        _login(second)
        assert _receive(second, len(payloads)) == payloads
        assert _receive(first, len(payloads)) == payloads
    assert srv.wait_finished(2, TIMEOUT)
    assert srv.connections == 2 and srv.trades_sent == 10_000


def test_repeat(server_factory, payloads):
    srv = server_factory(payloads[:3], repeat=3, close_after=True)
    with _connect(srv.url) as ws:
        _login(ws)
        assert _receive(ws, 9) == payloads[:3] * 3
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT)


def test_wrong_key_gets_auth_failed_then_close_1008(server_factory, payloads):
    srv = server_factory(payloads, key="right")
    with _connect(srv.url) as ws:
        auth = _login(ws, key="wrong")
        assert auth == [
            {"ev": "status", "status": "auth_failed", "message": "authentication failed"}
        ]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT)
        assert ws.close_code == 1008
    with _connect(srv.url) as ws:
        assert _login(ws, key="right")[0]["status"] == "auth_success"
        assert _receive(ws, 2) == payloads[:2]


def test_close_after_sends_1000(server_factory, payloads):
    srv = server_factory(payloads, close_after=True)
    with _connect(srv.url) as ws:
        _login(ws)
        assert _receive(ws, len(payloads)) == payloads
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT)
        assert ws.close_code == 1000 and ws.close_reason == "replay finished"
    assert srv.wait_finished(1, TIMEOUT) and srv.completed == 1


def test_rate_paces_the_stream(server_factory):
    quiet = list(generate(profile="quiet", trades=3_000, seed=5))
    srv = server_factory(quiet, rate=10_000, close_after=True)
    with _connect(srv.url) as ws:
        _login(ws)
        started = time.monotonic()
        assert _receive(ws, len(quiet)) == quiet
        elapsed = time.monotonic() - started
    assert elapsed >= 0.2  # 3000 trades at 10k/s take 0.3 s; only a loose lower bound


def test_send_log_holds_the_kernels_transmit_times(server_factory):
    """Paced with a send log (tb profile's latency), every slice is logged with the time the
    kernel sent its last byte (a transmit timestamp, in CLOCK_MONOTONIC): no later than the
    client had it, in order, and covering every message once."""
    quiet = list(generate(profile="quiet", trades=1_500, seed=5))
    log: list = []
    srv = server_factory(quiet, rate=3_000, send_log=log)
    before = time.monotonic_ns()
    with _connect(srv.url) as ws:
        _login(ws)
        received_at = []
        for message in quiet:
            assert ws.recv(timeout=TIMEOUT).encode() == message
            received_at.append(time.monotonic_ns())
    assert [first for first, *_ in log] == [0] + [last + 1 for _, last, *_ in log[:-1]]
    assert log[-1][1] == len(quiet) - 1
    assert all(kernel for *_, kernel in log)
    times = [t for _, _, t, _ in log]
    assert times == sorted(times) and times[0] > before
    assert all(t <= received_at[last] for _, last, t, _ in log)


@pytest.mark.parametrize(
    "message", ["hello", '{"action": "dance"}', '["auth"]', '{"action":"subscribe","params":"T.*"}']
)
def test_bad_action_closes_1008_and_server_keeps_serving(server_factory, payloads, message):
    srv = server_factory(payloads)
    with _connect(srv.url) as ws:
        ws.recv(timeout=TIMEOUT)
        ws.send(message)  # subscribe before auth is refused too
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT)
        assert ws.close_code == 1008
    with _connect(srv.url) as ws:
        _login(ws)
        assert _receive(ws, len(payloads)) == payloads


def _raw_upgrade(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    request, key = client_request(f"127.0.0.1:{port}", "/stocks")
    s.sendall(request)
    buf = b""
    while not parse_client_response(buf, key):
        buf += s.recv(4096)
    return s


def _read_until_eof(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_websocket_garbage_closes_1002_and_server_keeps_serving(server_factory, payloads):
    srv = server_factory(payloads)
    s = _raw_upgrade(srv.port)
    s.sendall(b"\x81\x05hello")  # an unmasked frame from a client: a protocol error
    data = _read_until_eof(s)
    s.close()
    i = data.rfind(b"\x88")  # the close frame comes last
    assert i >= 0 and int.from_bytes(data[i + 2 : i + 4], "big") == 1002
    with _connect(srv.url) as ws:
        _login(ws)
        assert _receive(ws, len(payloads)) == payloads


def test_bad_http_request_gets_400(server_factory, payloads):
    srv = server_factory(payloads)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_until_eof(s).startswith(b"HTTP/1.1 400 ")
    with _connect(srv.url) as ws:
        _login(ws)


def test_max_connections(server_factory, payloads):
    srv = server_factory(payloads, max_connections=1)
    with _connect(srv.url) as first:
        _login(first)
        with _connect(srv.url) as ws:
            assert json.loads(ws.recv(timeout=TIMEOUT))[0]["status"] == "max_connections"
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT)
            assert ws.close_code == 1008
    assert srv.wait_finished(2, TIMEOUT)


def test_client_leaving_mid_stream_is_counted(server_factory, caplog):
    caplog.set_level(logging.INFO, logger="tb.replay")
    big = list(generate(profile="burst", trades=300_000, seed=9))
    srv = server_factory(big)
    with _connect(srv.url, max_queue=4, close_timeout=0.5) as ws:  # stops reading, then leaves
        _login(ws)
        ws.recv(timeout=TIMEOUT)
    assert srv.wait_finished(1, TIMEOUT)
    assert srv.completed == 0
    assert "left after" in caplog.text


def test_count_trades():
    assert count_trades(b'[{"ev":"T"},{"ev": "T"}]') == 2
    assert count_trades(b'[{"ev":"status","status":"x"},{"ev":"T"}]') == 1
    assert count_trades(b"[]") == 0


# --- the CLI, as a real process ------------------------------------------------------------


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_cli(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tb", "replay", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell without job control starts background jobs with SIGINT ignored, and an
        # ignored SIGINT stays ignored in the child: give it the default, as a terminal would
        preexec_fn=_default_sigint,
    )
    line = proc.stdout.readline()
    m = re.fullmatch(r"listening on (ws://127\.0\.0\.1:\d+)\n", line)
    if not m:
        proc.kill()
        pytest.fail(f"no listening line: {line!r} {proc.stderr.read()}")
    return proc, m.group(1)


def test_cli_serves_a_json_lines_capture_once(tmp_path, payloads):
    path = tmp_path / "feed.jsonl"
    path.write_bytes(b"\n".join(payloads[:4]) + b"\n")
    proc, url = _start_cli(str(path), "--once", "--close-after", "--key", "k")
    try:
        with _connect(url) as ws:
            _login(ws, key="k")
            assert _receive(ws, 4) == payloads[:4]
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert re.fullmatch(r"streaming to 127\.0\.0\.1:\d+\n", out), out  # (tb profile stamps it)
    trades = sum(count_trades(p) for p in payloads[:4])
    assert f"sent {trades} trades in 4 messages" in err
    assert "Traceback" not in err


def test_cli_generates_in_memory_and_stops_on_sigint(tmp_path):
    proc, url = _start_cli("--gen-profile", "quiet", "--gen-trades", "50")
    try:
        with _connect(url) as ws:
            _login(ws)
            got = sum(len(json.loads(ws.recv(timeout=TIMEOUT))) for _ in range(3))
            assert got >= 3
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in err


def test_cli_bad_capture_is_one_line(tmp_path):
    path = tmp_path / "cut.tbcap"
    with CaptureWriter(path) as w:
        w.write(b"[1,2,3]")
    path.write_bytes(path.read_bytes()[:-2])
    proc = subprocess.run(
        [sys.executable, "-m", "tb", "replay", str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "truncated capture" in proc.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "tb", "replay", os.fspath(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
    )
    assert missing.returncode == 2 and "cannot read" in missing.stderr

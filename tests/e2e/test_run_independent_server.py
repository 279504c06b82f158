"""`tb run` against servers tb did not write: the `websockets` library, and a raw socket server
that sends garbage."""

from __future__ import annotations

import json
import random
import sys
import threading

import pytest
from harness import (
    VERIFY_WORKER,
    ScriptedFeed,
    check_delivery,
    close_code_sent,
    frame,
    read_log,
    run_tb,
)

websockets_sync = pytest.importorskip("websockets.sync.server")


def spaced_feed(n_messages: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    syms = ["AAPL", "MSFT", "A", "BRK.A", "TSLA", "NVDA", "SPY", "Z" * 12, "QQQ"]
    out, seq = [], 0
    for _ in range(n_messages):
        events = []
        for _ in range(rng.randint(1, 40)):
            seq += 1
            ev = {"ev": "T", "sym": rng.choice(syms), "i": str(seq), "x": 4, "p": 100.5,
                  "s": 10, "c": [12, 37], "t": 1700000000000 + seq, "q": seq, "z": 3}  # fmt: skip
            items = list(ev.items())
            rng.shuffle(items)  # key order is not guaranteed by the feed
            events.append(dict(items))
        out.append(json.dumps(events))  # json.dumps defaults: spaces after ':' and ','
    return out


class WebsocketsFeed:
    """A feed server on the websockets library: fragments, pings, spaced JSON, then close 1000."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        self.pongs = 0
        self.auth = None
        self.server = websockets_sync.serve(self.handler, "127.0.0.1", 0, compression=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handler(self, ws) -> None:
        ws.send(
            json.dumps(
                [{"ev": "status", "status": "connected", "message": "Connected Successfully"}]
            )
        )
        self.auth = json.loads(ws.recv(timeout=10))
        ws.send('[{"ev":"status","status":"auth_success","message":"authenticated"}]')
        sub = json.loads(ws.recv(timeout=10))
        for topic in sub["params"].split(","):
            ws.send(
                json.dumps(
                    [{"ev": "status", "status": "success", "message": f"subscribed to: {topic}"}]
                )
            )
        for i, msg in enumerate(self.messages):
            if i % 7 == 0:
                cut = [0, len(msg) // 3, len(msg) // 2, len(msg)]
                ws.send(
                    [msg[a:b] for a, b in zip(cut, cut[1:], strict=False)]
                )  # a fragmented message
            else:
                ws.send(msg)
            if i % 25 == 0:
                if ws.ping(str(i).encode()).wait(10):
                    self.pongs += 1
        ws.close(1000, "done")

    def close(self) -> None:
        self.server.shutdown()


def test_websockets_library_server_fragments_pings_spaces(tmp_path):
    messages = spaced_feed(200, seed=11)
    feed = WebsocketsFeed(messages)
    log = tmp_path / "log.jsonl"
    try:
        proc = run_tb(
            ["run", f"ws://127.0.0.1:{feed.port}/stocks", "--pipes", "4", "--key", "kk", "--once",
             "--subscribe", "T.AAPL,T.MSFT", "--workdir", str(tmp_path),
             "--", sys.executable, VERIFY_WORKER, str(log)]
        )  # fmt: skip
    finally:
        feed.close()
    assert proc.returncode == 0, proc.stderr
    assert feed.auth == {"action": "auth", "params": "kk"}
    assert feed.pongs == len(range(0, 200, 25)), "every ping was answered with a pong"
    check_delivery(read_log(log), messages, 4)
    assert "Traceback" not in proc.stderr


def test_websockets_library_server_feed_frames_take_the_fast_path(tmp_path):
    # the feed's own layout, with what a server library may do to it: fragments, pings, and
    # 64-bit lengths for messages of 64 KiB or more -- none of it may send trades the general way
    from tb.gen import generate

    batches = [json.loads(p) for p in generate(profile="burst", trades=20000, symbols=300)]
    messages = []
    for i in range(0, len(batches), 4):
        if i % 12 == 0:  # three batches in one message: ~120 KB
            messages.append(sum(batches[i : i + 3], []))
            messages += batches[i + 3 : i + 4]
        else:
            messages += batches[i : i + 4]
    messages = [json.dumps(m, separators=(",", ":")) for m in messages]
    assert max(map(len, messages)) > 0xFFFF
    feed = WebsocketsFeed(messages)
    log = tmp_path / "log.jsonl"
    try:
        proc = run_tb(
            ["run", f"ws://127.0.0.1:{feed.port}/stocks", "--pipes", "5", "--key", "kk", "--once",
             "--workdir", str(tmp_path), "--", sys.executable, VERIFY_WORKER, str(log)]
        )  # fmt: skip
    finally:
        feed.close()
    assert proc.returncode == 0, proc.stderr
    check_delivery(read_log(log), messages, 5)
    final = [line for line in proc.stderr.splitlines() if "tb: final" in line]
    counters = dict(kv.split("=", 1) for kv in final[0].split() if "=" in kv)
    assert counters["routed"] == "20000", final[0]
    assert counters["general"] == counters["statuses"], final[0]  # the statuses only
    assert "Traceback" not in proc.stderr


def trade(sym: str, q: int) -> dict:
    return {"ev": "T", "sym": sym, "i": str(q), "x": 1, "p": 1.5, "s": 1, "t": 1, "q": q}


def run_once_against(feed: ScriptedFeed, tmp_path, pipes: int, *extra: str):
    """`tb run --once` against a scripted feed with the verifying worker; (process, worker log)."""
    log = tmp_path / "log.jsonl"
    try:
        proc = run_tb(["run", f"ws://127.0.0.1:{feed.port}/", "--pipes", str(pipes), "--key", "k",
                       "--once", *extra, "--workdir", str(tmp_path),
                       "--", sys.executable, VERIFY_WORKER, str(log)])  # fmt: skip
        feed.thread.join(10)  # the server has seen everything tb sent, its close frame included
    finally:
        feed.close()
    return proc, log


def test_garbage_frame_closes_1002_and_keeps_what_came_before(tmp_path):
    good = [json.dumps([trade("AAPL", 1), trade("MSFT", 2)]), json.dumps([trade("A", 3)])]
    feed = ScriptedFeed(
        [frame(m.encode()) for m in good] + [b"\x83\x05hello"]
    )  # opcode 3: reserved
    proc, log = run_once_against(feed, tmp_path, 2)
    assert proc.returncode == 5, proc.stderr
    assert "protocol error" in proc.stderr and "Traceback" not in proc.stderr
    assert close_code_sent(feed.received) == 1002
    check_delivery(read_log(log), good, 2)


def test_non_json_payload_is_counted_and_the_rest_is_delivered(tmp_path):
    good = [json.dumps([trade("AAPL", 1)]), json.dumps([trade("MSFT", 2), trade("AAPL", 3)])]
    script = [frame(good[0].encode()), frame(b"this is not json {"), frame(good[1].encode()),
              frame(b'[{"ev":"T","sym":"NVDA","i":"4","q":4},'), b"\x88\x02\x03\xe8"]  # fmt: skip
    proc, log = run_once_against(ScriptedFeed(script), tmp_path, 3)
    assert proc.returncode == 0, proc.stderr
    assert "malformed" in proc.stderr and "Traceback" not in proc.stderr
    final = [ln for ln in proc.stderr.splitlines() if "tb: final" in ln][0]
    assert "malformed=2" in final
    # The truncated array's complete object is still routed: nothing that arrived whole is lost.
    check_delivery(read_log(log), good + ['[{"ev":"T","sym":"NVDA","i":"4","q":4}]'], 3)


def test_whole_frames_in_one_receive_with_a_status_and_an_empty_message(tmp_path):
    """Several whole frames sent in one piece (a trickle's receive when tb wakes late): trades, a
    status between them, an empty message; then frames of trades only. Every trade arrives."""
    good = [json.dumps([trade("AAPL", 1), trade("MSFT", 2)]), json.dumps([trade("A", 3)]),
            json.dumps([trade("AAPL", 4)]), json.dumps([trade("MSFT", 5), trade("NVDA", 6)]),
            json.dumps([trade("A", 7)])]  # fmt: skip
    status = b'[{"ev":"status","status":"success","message":"subscribed to: Q.*"}]'
    first = [frame(good[0].encode()), frame(status), frame(good[1].encode()), frame(b"[]"),
             frame(good[2].encode())]  # fmt: skip
    script = [b"".join(first), b"".join(frame(m.encode()) for m in good[3:]), b"\x88\x02\x03\xe8"]
    proc, log = run_once_against(ScriptedFeed(script), tmp_path, 3)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    final = [ln for ln in proc.stderr.splitlines() if "tb: final" in ln][0]
    assert "malformed=0" in final or "malformed" not in final, final
    check_delivery(read_log(log), good, 3)


@pytest.mark.parametrize("before", [0, 1, 40])
def test_invalid_utf8_closes_1007_and_keeps_what_came_before(tmp_path, before):
    good = [json.dumps([trade("AAPL", q), trade("MSFT", q + 1000)]) for q in range(before)]
    # sent in one piece: the good messages and the bad one arrive in the same receive
    feed = ScriptedFeed(
        [b"".join(frame(m.encode()) for m in good) + frame(b'[{"ev":"T","sym":"A\xff"}]')]
    )
    proc, log = run_once_against(feed, tmp_path, 2)
    assert proc.returncode == 5, proc.stderr
    assert close_code_sent(feed.received) == 1007
    assert "Traceback" not in proc.stderr
    check_delivery(read_log(log), good, 2)


def test_oversized_message_closes_1009(tmp_path):
    feed = ScriptedFeed([frame(b"[" + b" " * 70000 + b"]")])
    proc, _ = run_once_against(feed, tmp_path, 2, "--max-message", "64K")
    assert proc.returncode == 5, proc.stderr
    assert close_code_sent(feed.received) == 1009

"""Worker supervision with real faults: SIGKILL the worker mid-stream, again and again."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
from harness import LiveTb, expected_events, run_tb

from tb.capture import read_capture

KILL_WORKER = str(Path(__file__).parent / "kill_worker.py")


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("cap") / "feed.tbcap"
    proc = run_tb(
        [
            "gen",
            str(path),
            "--profile",
            "quiet",
            "--trades",
            "40000",
            "--symbols",
            "300",
            "--seed",
            "9",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    return path, list(read_capture(str(path)))


def test_sigkill_the_worker_ten_times_mid_stream(tmp_path, capture, replay_factory):
    path, payloads = capture
    # 20 s of stream: the ten kills take ~10 s (restart delays 0.1 s doubling to 1 s, the kill
    # waits, ten worker start-ups), and every one must land while trades still flow
    replay = replay_factory(str(path), "--rate", "2000", "--close-after")
    log = tmp_path / "log.txt"
    tb = LiveTb(
        ["run", replay.url, "--pipes", "4", "--key", "k", "--once", "--restart", "always",
         "--max-restarts", "30", "--workdir", str(tmp_path), "--", sys.executable, KILL_WORKER, str(log)]
    )  # fmt: skip
    rng = random.Random(5)
    kills = 0
    deadline = time.monotonic() + 60
    while kills < 10 and time.monotonic() < deadline:
        pids = tb.pids()
        if len(pids) == kills + 1:  # the current worker is up: let it read a while, then kill it
            time.sleep(rng.uniform(0.05, 0.35))
            try:
                os.kill(pids[-1], signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    assert tb.wait(90) == 0, tb.text[-3000:]
    assert kills == 10

    lines = log.read_bytes().splitlines()
    assert b"CORRUPT" not in b"\n".join(lines), "a torn record reached a worker"
    # A record line not followed by "+": its worker died between logging it and reading its "}"
    # (the "}" may still have been in the pipe: then tb cut it and counted it lost as well).
    unsure = sum(1 for k, ln in enumerate(lines) if ln != b"+" and lines[k + 1 : k + 2] != [b"+"])
    lines = [ln for ln in lines if ln != b"+"]
    sent = expected_events(payloads)
    by_key = {json.dumps(o, sort_keys=True): o for o in sent}
    got = []
    for ln in lines:
        pipe, raw = ln.split(b" ", 1)
        obj = json.loads(raw)  # every logged record is a whole, valid JSON object
        got.append((int(pipe), obj))
    keys = [json.dumps(o, sort_keys=True) for _, o in got]
    assert len(set(keys)) == len(keys), "a record was delivered twice"
    assert set(keys) <= set(by_key), "a record that the server never sent"
    # Per-symbol order: the logged records of each symbol are a subsequence of the feed's order.
    order = {k: n for n, k in enumerate(json.dumps(o, sort_keys=True) for o in sent)}
    last: dict[str, int] = {}
    pipe_of: dict[str, int] = {}
    for (pipe, obj), k in zip(got, keys, strict=True):
        assert order[k] > last.get(obj["sym"], -1), f"{obj['sym']} out of order"
        last[obj["sym"]] = order[k]
        assert pipe_of.setdefault(obj["sym"], pipe) == pipe
    final = tb.final()
    lost = int(final["lost_in_worker"])
    missing = len(sent) - len(keys)
    # Every trade is logged by a worker, or is one of at most one per kill that tb counted; tb
    # also counts a logged record whose "}" its worker never read (at most the unsure ones).
    assert missing <= lost <= missing + unsure, (
        f"{missing} missing, {unsure} unsure, tb: {lost} lost"
    )
    assert unsure <= kills
    assert lost <= kills
    assert int(final["routed"]) == int(final["written"]) == len(sent)
    assert final["queued"] == "0" and int(final["worker_restarts"]) == kills
    assert "Traceback" not in tb.text


def test_final_counters_name_the_torn_records(tmp_path, capture, replay_factory):
    """A worker killed while it sits inside a record: the record is cut, counted, never passed on."""
    path, payloads = capture
    replay = replay_factory(str(path), "--rate", "20000", "--close-after")
    log = tmp_path / "log.txt"
    stuck = tmp_path / "stuck_worker.py"
    # Reads a header and half a body on pipe 0, then hangs there until killed; the next worker logs.
    stuck.write_text(
        "import os, sys, time, struct\n"
        "fds = [int(a) for a in sys.argv[2:]]\n"
        "if not os.path.exists(sys.argv[1] + '.first'):\n"
        "    open(sys.argv[1] + '.first', 'w').close()\n"
        "    n = struct.unpack('<I', os.read(fds[0], 4))[0]\n"
        "    os.read(fds[0], n // 2)\n"
        "    time.sleep(60)\n"
        f"os.execv(sys.executable, [sys.executable, {KILL_WORKER!r}, *sys.argv[1:]])\n"
    )
    tb = LiveTb(
        ["run", replay.url, "--pipes", "3", "--key", "k", "--once", "--workdir", str(tmp_path),
         "--", sys.executable, str(stuck), str(log)]
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (tmp_path / "log.txt.first").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(tb.pids()[0], signal.SIGKILL)
    assert tb.wait(60) == 0, tb.text[-3000:]
    final = tb.final()
    assert final["lost_in_worker"] == "1" and final["worker_restarts"] == "1"
    assert "died inside a record" in tb.text and "pipe 0" in tb.text
    got = [json.loads(ln.split(b" ", 1)[1]) for ln in log.read_bytes().splitlines() if ln != b"+"]
    assert len(got) == len(expected_events(payloads)) - 1

"""Helpers shared by the end-to-end tests: real tb processes, real sockets on 127.0.0.1, real pipes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "e2e"
VERIFY_WORKER = str(HERE / "verify_worker.py")


def tb_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tb", *args]


class Replay:
    """`tb replay` as a subprocess; .url once it listens."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            tb_cmd("replay", "--listen", "127.0.0.1:0", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (ws://\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"replay did not start: {line!r} {self.proc.stderr.read()}")
        self.url = m.group(1)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


@pytest.fixture
def replay_factory():
    made: list[Replay] = []

    def make(*args: str) -> Replay:
        r = Replay(*args)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def run_tb(args: list[str], *, timeout: float = 60, env: dict | None = None):
    """Run `tb ARGS`; return CompletedProcess (text). Kills it on timeout and fails the test."""
    full_env = dict(os.environ)
    for var in ("POLYGON_API_KEY", "MASSIVE_API_KEY"):
        full_env.pop(var, None)
    full_env.update(env or {})
    try:
        return subprocess.run(
            tb_cmd(*args), capture_output=True, text=True, timeout=timeout, env=full_env
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"tb {' '.join(args)} did not finish in {timeout} s: {exc.stderr}")


def read_log(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def expected_events(payloads) -> list[dict]:
    out = []
    for p in payloads:
        for obj in json.loads(p):
            if obj.get("ev") != "status":
                out.append(obj)
    return out


def check_delivery(log: list[dict], payloads, npipes: int, hash_name: str = "mixed") -> None:
    """Every event sent arrived exactly once, byte-exact JSON, per-symbol order kept, one pipe per
    symbol, and the pipe is the documented hash of the symbol."""
    from tb.route.hashing import HASHES

    sent = expected_events(payloads)
    got = [json.loads(r["raw"]) for r in log]
    assert len(got) == len(sent), f"sent {len(sent)} events, worker logged {len(got)}"
    key = lambda o: json.dumps(o, sort_keys=True)  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, sent)), "the multiset of events differs"
    per_sym_sent: dict[str, list[str]] = {}
    for o in sent:
        per_sym_sent.setdefault(o["sym"], []).append(key(o))
    per_sym_got: dict[str, list[str]] = {}
    pipe_of: dict[str, int] = {}
    for r, o in zip(log, got, strict=True):
        per_sym_got.setdefault(o["sym"], []).append(key(o))
        assert pipe_of.setdefault(o["sym"], r["pipe"]) == r["pipe"], f"{o['sym']} on two pipes"
    assert per_sym_got == per_sym_sent, "per-symbol order differs"
    pick = HASHES[hash_name]
    for sym, pipe in pipe_of.items():
        assert pipe == pick(sym.encode(), npipes), f"{sym} on pipe {pipe}"


@pytest.fixture
def wait_for():
    def wait(pred, timeout=10.0, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.02)
        pytest.fail(f"timed out waiting for {what}")

    return wait

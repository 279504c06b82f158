"""Helpers shared by the end-to-end tests: real tb processes, real sockets on 127.0.0.1, real pipes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tb.replay import LISTENING

HERE = Path(__file__).parent / "e2e"
VERIFY_WORKER = str(HERE / "verify_worker.py")


def tb_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tb", *args]


class Replay:
    """`tb replay` as a subprocess; .url (ws:// or wss://) once it listens."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            tb_cmd("replay", "--listen", "127.0.0.1:0", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        m = LISTENING.search(line)
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


def instrument(obj: dict) -> str:
    """The placement rule: sym, else pair, else (a forex quote) p."""
    return obj["sym"] if "sym" in obj else obj["pair"] if "pair" in obj else obj["p"]


def check_delivery(
    log: list[dict], payloads, npipes: int, hash_name: str = "mixed", plan=None
) -> None:
    """Every event sent arrived exactly once, byte-exact JSON, per-symbol order kept, one pipe per
    symbol, and the pipe is the documented hash of the symbol (with `plan`: its planned pipe,
    else the hash)."""
    from tb.route.hashing import HASHES

    sent = expected_events(payloads)
    got = [json.loads(r["raw"]) for r in log]
    assert len(got) == len(sent), f"sent {len(sent)} events, worker logged {len(got)}"
    key = lambda o: json.dumps(o, sort_keys=True)  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, sent)), "the multiset of events differs"
    per_sym_sent: dict[str, list[str]] = {}
    for o in sent:
        per_sym_sent.setdefault(instrument(o), []).append(key(o))
    per_sym_got: dict[str, list[str]] = {}
    pipe_of: dict[str, int] = {}
    for r, o in zip(log, got, strict=True):
        sym = instrument(o)
        per_sym_got.setdefault(sym, []).append(key(o))
        assert pipe_of.setdefault(sym, r["pipe"]) == r["pipe"], f"{sym} on two pipes"
    assert per_sym_got == per_sym_sent, "per-symbol order differs"
    pick = HASHES[hash_name] if plan is None else plan.pick
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


def _accept(key: str) -> str:
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    return base64.b64encode(digest).decode()


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """A server-to-client websocket frame (unmasked), written independently of tb.ws."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return head + payload


DROP = "drop"  # in a script: close the TCP connection right here (FIN), mid-frame or not
RESET = "reset"  # in a script: reset the TCP connection (RST: the kernel may discard unread data)
HANG = "hang"  # in a script: send nothing more, answer nothing, keep the socket open


class ScriptedFeed:
    """A raw-socket feed server: connection k gets the handshake (greeting, auth, subscribe) and
    then scripts[k]: bytes to send, DROP, RESET or HANG. After its script a connection is read
    until the client closes. Connections past the last script get the handshake only."""

    def __init__(self, *scripts: list) -> None:
        self.scripts = list(scripts)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/stocks"
        self.received = b""
        self.connections = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.sock.settimeout(30)
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            script = self.scripts[self.connections] if self.connections < len(self.scripts) else []
            self.connections += 1
            try:
                self._serve_one(conn, script)
            except OSError:
                pass
            finally:
                conn.close()
            if len(self.scripts) == 1 and self.connections == 1:
                return

    def _serve_one(self, conn: socket.socket, script: list) -> None:
        conn.settimeout(10)
        req = b""
        while b"\r\n\r\n" not in req:
            req += conn.recv(4096)
        key = [
            ln.split(b":", 1)[1].strip()
            for ln in req.split(b"\r\n")
            if ln.lower().startswith(b"sec-websocket-key")
        ][0]
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: "
            + _accept(key.decode()).encode()
            + b"\r\n\r\n"
            + frame(b'[{"ev":"status","status":"connected","message":"hi"}]')
        )
        self.received += conn.recv(65536)  # auth
        conn.sendall(frame(b'[{"ev":"status","status":"auth_success","message":"ok"}]'))
        self.received += conn.recv(65536)  # subscribe
        conn.sendall(frame(b'[{"ev":"status","status":"success","message":"subscribed to: T.*"}]'))
        for item in script:
            if item == DROP:
                conn.shutdown(socket.SHUT_RDWR)
                return
            if item == RESET:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                return
            if item == HANG:
                conn.settimeout(60)
                break
            conn.sendall(item)
        while True:
            data = conn.recv(65536)
            if not data:
                return
            self.received += data

    def close(self) -> None:
        self.sock.close()


class LiveTb:
    """`tb run` as a subprocess whose stderr is collected line by line while it runs."""

    def __init__(self, args: list[str]) -> None:
        env = {
            k: v for k, v in os.environ.items() if k not in ("POLYGON_API_KEY", "MASSIVE_API_KEY")
        }
        self.proc = subprocess.Popen(tb_cmd(*args), stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def pids(self) -> list[int]:
        return [
            int(m.group(1))
            for ln in list(self.lines)
            if (m := re.search(r"started \(pid (\d+)\)", ln))
        ]

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("tb did not finish:\n" + "".join(self.lines[-30:]))
        self.thread.join(5)
        return rc

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def final(self) -> dict[str, str]:
        line = [ln for ln in self.lines if "tb: final" in ln][-1]
        return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse what a client sent (masked frames), independently of tb.ws: [(opcode, payload)]."""
    out, pos = [], 0
    while pos + 2 <= len(data):
        b0, b1 = data[pos], data[pos + 1]
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            n, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif n == 127:
            n, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        mask, pos = data[pos : pos + 4], pos + 4
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(data[pos : pos + n]))
        out.append((b0 & 0x0F, body))
        pos += n
    return out


def close_code_sent(data: bytes) -> int | None:
    """The code of the client's close frame, if it sent one."""
    for opcode, body in client_frames(data):
        if opcode == 8 and len(body) >= 2:
            return int.from_bytes(body[:2], "big")
    return None


def top_level_spans(message: bytes) -> list[tuple[int, int]]:
    """Object spans inside a JSON array (a reference model: a plain character state machine)."""
    spans, depth, in_str, esc, start = [], 0, False, False, 0
    for i, ch in enumerate(message):
        if in_str:
            if esc:
                esc = False
            elif ch == 0x5C:
                esc = True
            elif ch == 0x22:
                in_str = False
        elif ch == 0x22:
            in_str = True
        elif ch in b"[{":
            if ch == 0x7B and depth == 1:
                start = i
            depth += 1
        elif ch in b"]}":
            depth -= 1
            if ch == 0x7D and depth == 1:
                spans.append((start, i + 1))
    return spans


def reference_place(obj: dict, npipes: int, hash_name: str) -> int | str | None:
    """Where a decoded event belongs (a reference model): "status", a pipe, or None (no symbol).

    The instrument key is sym, else pair, else (forex quotes, ev C) p."""
    from tb.route.hashing import HASHES

    ev = obj.get("ev")
    if ev == "status":
        return "status"
    key = next((k for k in ("sym", "pair") if k in obj), "p" if ev == "C" else None)
    if key is None or not isinstance(obj.get(key), str):
        return None
    return HASHES[hash_name](obj[key].encode("utf-8", "surrogatepass"), npipes)


def reference_route(messages: list[bytes], docs: list[list], npipes: int, hash_name: str):
    """Where every event of these decoded messages belongs (a reference model): each pipe's object
    bytes in feed order, the status objects, and the number of events without a symbol."""
    pipes: list[list[bytes]] = [[] for _ in range(npipes)]
    statuses, no_symbol = [], 0
    for message, doc in zip(messages, docs, strict=True):
        spans = top_level_spans(message)
        assert len(spans) == len(doc), "the model misread a message"
        for (start, end), obj in zip(spans, doc, strict=True):
            place = reference_place(obj, npipes, hash_name)
            if place == "status":
                statuses.append(obj)
            elif place is None:
                no_symbol += 1
            else:
                pipes[place].append(message[start:end])
    return pipes, statuses, no_symbol


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET on loopback; (0, "") while nothing listens there."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except urllib.error.URLError:
        return 0, ""  # (not listening yet)


def scrape_metrics(port: int) -> dict[str, float]:
    """name{labels} -> value from http://127.0.0.1:PORT/metrics, parsed by prometheus_client's
    own parser ({} until it answers)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    out: dict[str, float] = {}
    if status != 200:
        return out
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out

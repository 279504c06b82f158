"""Helpers for the NATS tests (tests/jetstream): a real nats-server with JetStream on a free
loopback port, tb processes watched while they run, and the worker's log read back."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from harness import reference_route, tb_cmd

from tb.capture import read_capture

NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None
)
LOG_WORKER = str(Path(__file__).parent / "jetstream" / "log_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """`nats-server -js` on 127.0.0.1:PORT with its store in a temporary directory."""

    def __init__(self, store: Path, *extra: str) -> None:
        self.store = store
        self.port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)]
            + list(self.extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start listening within 10 s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def nats_server(tmp_path):
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed here (apt-get install nats-server)")
    server = NatsServer(tmp_path / "jetstream")
    yield server
    server.stop()


@pytest.fixture
def nats_factory(tmp_path):
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed here (apt-get install nats-server)")
    made: list[NatsServer] = []

    def make(*extra: str) -> NatsServer:
        server = NatsServer(tmp_path / f"jetstream{len(made)}", *extra)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def nats_tls(tmp_path):
    """nats-server -js with TLS on (its `tls {}` block), with a certificate for 127.0.0.1 from a
    throwaway CA (trustme): yields (server, the CA's PEM, another CA's PEM)."""
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed here (apt-get install nats-server)")
    import trustme

    ca, other = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server-cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server-key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    other.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    conf = tmp_path / "nats-tls.conf"
    conf.write_text(
        "tls {\n"
        f'  cert_file: "{tmp_path / "server-cert.pem"}"\n'
        f'  key_file: "{tmp_path / "server-key.pem"}"\n'
        "}\n"
    )
    server = NatsServer(tmp_path / "jetstream", "-c", str(conf))
    yield server, tmp_path / "ca.pem", tmp_path / "other-ca.pem"
    server.stop()


def _nkey(prefix: int):
    """(seed, public key, key pair) of a new NKey of the kind `prefix` names."""
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), prefix)
    kp = nkeys.from_seed(bytearray(seed))
    return seed.decode(), kp.public_key.decode(), kp


def _jwt(issuer, subject: str, name: str, nats: dict) -> str:
    """A NATS JWT (v2) for `subject`, signed by the key pair `issuer`."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name,
              "sub": subject, "nats": {**nats, "version": 2}}  # fmt: skip
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims).encode()).digest())
    claims["jti"] = claims["jti"].decode().rstrip("=")
    head = b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = b64(json.dumps(claims).encode())
    return f"{head}.{body}.{b64(issuer.sign(f'{head}.{body}'.encode()))}"


def operator_mode(d: Path) -> tuple[Path, Path, Path]:
    """nats-server's operator mode, as `nsc` sets it up, made by hand: an operator, an account
    with JetStream, a system account, and a user of the account. Writes (the server's config,
    the user's credentials file, the credentials of a user whose account the server does not
    know) into `d`."""
    import nkeys

    _, opub, okp = _nkey(nkeys.PREFIX_BYTE_OPERATOR)
    limits = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
              "wildcards": True, "conn": -1, "leaf": -1}  # fmt: skip
    js = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    _, apub, akp = _nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    _, spub, _ = _nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    _, _, stranger = _nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    account = _jwt(okp, apub, "tb", {"type": "account", "limits": {**limits, **js}})
    system = _jwt(okp, spub, "SYS", {"type": "account", "limits": limits})
    conf = d / "operator.conf"
    conf.write_text(
        f"operator: {_jwt(okp, opub, 'op', {'type': 'operator'})}\n"
        f"system_account: {spub}\nresolver: MEMORY\n"
        f"resolver_preload: {{\n  {apub}: {account}\n  {spub}: {system}\n}}\n"
    )
    files = []
    for name, issuer in (("user.creds", akp), ("stranger.creds", stranger)):
        useed, upub, _ = _nkey(nkeys.PREFIX_BYTE_USER)
        user = _jwt(issuer, upub, name, {"type": "user", "pub": {}, "sub": {}, "subs": -1,
                                         "data": -1, "payload": -1})  # fmt: skip
        (d / name).write_text(
            f"-----BEGIN NATS USER JWT-----\n{user}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{useed}\n------END USER NKEY SEED------\n"
        )
        files.append(d / name)
    return conf, files[0], files[1]


def nkey_users(d: Path) -> tuple[Path, Path, Path]:
    """A config whose one user is an NKey (`authorization { users = [ { nkey: U... } ] }`):
    (the config, that user's seed file, another user's seed file)."""
    import nkeys

    seed, public, _ = _nkey(nkeys.PREFIX_BYTE_USER)
    other, _, _ = _nkey(nkeys.PREFIX_BYTE_USER)
    conf = d / "nkey.conf"
    conf.write_text(f"authorization {{\n  users = [ {{ nkey: {public} }} ]\n}}\n")
    (d / "user.nk").write_text(seed + "\n")
    (d / "other.nk").write_text(other + "\n")
    return conf, d / "user.nk", d / "other.nk"


class Proc:
    """A tb process whose stderr is collected line by line while it runs."""

    def __init__(self, args: list[str], env: dict | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            tb_cmd(*args), stderr=subprocess.PIPE, text=True, env=full_env, start_new_session=True
        )
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"{self.proc.args[3:5]} did not finish:\n" + "".join(self.lines[-30:]))
        self.thread.join(5)
        return rc

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def final(self, prefix: str) -> dict[str, str]:
        line = [ln for ln in self.lines if ln.startswith(prefix)][-1]
        return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def logged(path: Path) -> list[dict]:
    """The log worker's lines so far (a torn last line, from a kill, is left out)."""
    if not path.exists():
        return []
    out = []
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                out.append(json.loads(line))
    return out


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))


def expected_pipes(capture: Path, npipes: int) -> list[list[bytes]]:
    """Each pipe's records, as tb run writes them (the reference model of tests/harness.py)."""
    messages = [bytes(m) for m in read_capture(str(capture))]
    docs = [json.loads(m) for m in messages]
    pipes, _, _ = reference_route(messages, docs, npipes, "mixed")
    return pipes


def worker_pipes(log: list[dict], npipes: int) -> list[list[bytes]]:
    out: list[list[bytes]] = [[] for _ in range(npipes)]
    for r in log:
        out[r["partition"]].append(r["raw"].encode())
    return out


def log_worker(path: Path) -> list[str]:
    return [sys.executable, LOG_WORKER, str(path)]

"""Kernel TLS for real: tb.transport.ktls and `tb run --tls ktls` on a kernel with TLS offload.

The development machines' kernel has no kTLS, so these run inside a VM:

    python3 tools/ktlsvm.py -e PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 -- python3 -m pytest -m ktls

On a kernel without kTLS they skip with that command as the reason; inside the VM
(KTLSVM_GUEST=1) or with KTLS_REQUIRED=1 they fail instead, so a broken VM cannot pass as
"all skipped". The servers here are plain Python `ssl` (OpenSSL) on 127.0.0.1.
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import harness as e2e  # tests/harness.py: real tb processes on loopback
import pytest

from tb.transport import KTLSUnavailableError, TransportError, connect, ktls, parse_url

pytestmark = pytest.mark.ktls

SKIP_REASON = (
    "kernel has no kTLS (CONFIG_TLS): run them with "
    "python3 tools/ktlsvm.py -- python3 -m pytest -m ktls"
)
TIMEOUT = 30.0


def skip_or_fail(reason: str) -> None:
    if os.environ.get("KTLSVM_GUEST") == "1" or os.environ.get("KTLS_REQUIRED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def ktls_kernel() -> None:
    why = ktls.kernel_missing()
    if why:
        skip_or_fail(f"{SKIP_REASON} [{why}]")


@pytest.fixture(scope="module")
def ca(ktls_kernel, tmp_path_factory):
    import trustme

    d = tmp_path_factory.mktemp("certs")
    authority = trustme.CA()
    cert = authority.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    authority.cert_pem.write_to_path(str(d / "ca.pem"))
    return d / "server.pem", d / "ca.pem"


# ----------------------------------------------------------------------------- a TLS server

TLS12_CIPHERS = {
    "AES-128-GCM": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "AES-256-GCM": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ChaCha20-Poly1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
TLS13_SUITES = {
    "AES-128-GCM": "TLS_AES_128_GCM_SHA256",
    "AES-256-GCM": "TLS_AES_256_GCM_SHA384",
    "ChaCha20-Poly1305": "TLS_CHACHA20_POLY1305_SHA256",
}


def set_tls13_suites(ctx: ssl.SSLContext, suites: str) -> None:
    """SSL_CTX_set_ciphersuites, which Python 3.11 lacks (tests only: reaches into _ssl)."""
    libssl = ctypes.CDLL("libssl.so.3")
    libssl.SSL_CTX_get_options.restype = ctypes.c_uint64
    libssl.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    libssl.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    # PySSLContext is {PyObject_HEAD; SSL_CTX *ctx; ...}: the pointer follows the header.
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    assert libssl.SSL_CTX_get_options(ptr) == ctx.options, "PySSLContext layout changed"
    assert libssl.SSL_CTX_set_ciphersuites(ptr, suites.encode()) == 1


def server_context(
    server_pem: Path, version: str, cipher: str, *, kernel_tx: bool = False
) -> ssl.SSLContext:
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(str(server_pem))
    v = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    sctx.minimum_version = sctx.maximum_version = v
    if version == "1.2":
        sctx.set_ciphers(TLS12_CIPHERS.get(cipher, cipher))
    else:
        set_tls13_suites(sctx, TLS13_SUITES[cipher])
    if kernel_tx:
        sctx.options |= ktls.SSL_OP_ENABLE_KTLS
    return sctx


class Server:
    """One TLS connection on 127.0.0.1; `script(conn)` runs in a thread after the handshake."""

    def __init__(self, sctx: ssl.SSLContext, script) -> None:
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.url = parse_url(f"wss://localhost:{self.port}/")
        self.error: BaseException | None = None
        self.result = None
        self.thread = threading.Thread(target=self._serve, args=(sctx, script), daemon=True)
        self.thread.start()

    def _serve(self, sctx, script) -> None:
        try:
            conn, _ = self.lsock.accept()
            with sctx.wrap_socket(conn, server_side=True) as tconn:
                self.result = script(tconn)
        except BaseException as exc:  # re-raised by join()
            self.error = exc
        finally:
            self.lsock.close()

    def join(self):
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "server thread hung"
        if self.error:
            raise self.error
        return self.result


def stream(size: int) -> bytes:
    """A known byte stream that shows where it went wrong: 8-byte big-endian offsets."""
    return b"".join(i.to_bytes(8, "big") for i in range(0, size, 8))[:size]


def send_in_pieces(conn: ssl.SSLSocket, data: bytes) -> None:
    pos, step = 0, 1
    while pos < len(data):
        step = step * 3 % 20011 + 1  # record sizes from 1 byte to past 16 KiB
        conn.sendall(data[pos : pos + step])
        pos += step


def read_all(t, size: int, arena_size: int = 70_000) -> bytes:
    """Drive t.recv_into as tb's loop does (poll, then read into the arena's free tail)."""
    arena = bytearray(arena_size)
    view = memoryview(arena)
    out = bytearray()
    end = 0
    deadline = time.monotonic() + TIMEOUT
    while len(out) + end < size:
        assert time.monotonic() < deadline, f"stalled at {len(out) + end} of {size} bytes"
        select.select([t.fd], [], [], 1.0)
        n = t.recv_into(view[end:])
        if n is None:
            continue
        assert n > 0, f"EOF at {len(out) + end} of {size} bytes"
        end += n
        if end > arena_size - 1000:  # "compact": hand the bytes on, reuse the arena
            out += view[:end]
            end = 0
    out += view[:end]
    return bytes(out)


def read_eof(t) -> int:
    deadline = time.monotonic() + TIMEOUT
    buf = memoryview(bytearray(4096))
    while time.monotonic() < deadline:
        select.select([t.fd], [], [], 1.0)
        n = t.recv_into(buf)
        if n is not None:
            return n
    pytest.fail("no EOF")


# ----------------------------------------------------------------------------- the transport

SIZE = 1 << 20


def echo_script(payload: bytes):
    def script(conn: ssl.SSLSocket):
        got = conn.recv(100)  # the client speaks first (kernel TX or OpenSSL TX)
        send_in_pieces(conn, payload)
        try:
            conn.unwrap()  # sends close_notify, then waits for the client's, which never comes
        except (ssl.SSLError, OSError):
            pass
        return got

    return script


@pytest.mark.parametrize("cipher", list(TLS12_CIPHERS))
@pytest.mark.parametrize("server_ktls", [False, True], ids=["server-userspace", "server-ktls"])
def test_tls12_transport_reads_the_stream_through_recvmsg_into(ca, cipher, server_ktls):
    server_pem, ca_pem = ca
    payload = stream(SIZE)
    srv = Server(
        server_context(server_pem, "1.2", cipher, kernel_tx=server_ktls), echo_script(payload)
    )
    t = connect(srv.url, tls_mode="ktls", cafile=str(ca_pem))
    try:
        assert t.kind == "ktls"
        assert (t.info.version, t.info.cipher, t.info.rx, t.info.tx) == (
            "TLSv1.2",
            cipher,
            "openssl",
            "kernel",
        )
        assert t.send(b"hello over kernel TX") == 20
        assert read_all(t, SIZE) == payload
        assert read_eof(t) == 0  # close_notify
    finally:
        t.close()
    assert srv.join() == b"hello over kernel TX"


@pytest.mark.parametrize("cipher", list(TLS13_SUITES))
@pytest.mark.parametrize("tx", ["openssl", "userspace"])
def test_tls13_transport_installs_rx_keys_and_skips_session_tickets(ca, cipher, tx):
    """OpenSSL sends 2 NewSessionTickets first (num_tickets=2): records of type 22 to skip."""
    server_pem, ca_pem = ca
    payload = stream(SIZE)
    sctx = server_context(server_pem, "1.3", cipher)
    sctx.num_tickets = 3
    srv = Server(sctx, echo_script(payload))
    if tx == "openssl":
        t = connect(srv.url, tls_mode="ktls", cafile=str(ca_pem))
    else:  # a context without SSL_OP_ENABLE_KTLS: OpenSSL keeps TX, tb installs RX
        cctx = ssl.create_default_context(cafile=str(ca_pem))
        keylog = ktls.KeyLog(cctx)
        ssock = cctx.wrap_socket(
            socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT),
            server_hostname="localhost",
        )
        t = ktls.switch_to_ktls(ssock, keylog)
        ssock.setblocking(False)
        assert keylog.fd == -1
    try:
        assert t.kind == "ktls"
        assert (t.info.version, t.info.cipher, t.info.rx) == ("TLSv1.3", cipher, "tb")
        expect_tx = "kernel" if tx == "openssl" else "userspace"
        assert t.info.tx == expect_tx, t.info
        assert t.send(b"hello over kernel TX") == 20
        assert read_all(t, SIZE) == payload
        assert read_eof(t) == 0
    finally:
        t.close()
    assert srv.join() == b"hello over kernel TX"


def test_keylog_is_a_memfd_and_is_wiped(ca):
    server_pem, ca_pem = ca
    srv = Server(server_context(server_pem, "1.3", "AES-256-GCM"), lambda c: c.recv(1))
    cctx = ssl.create_default_context(cafile=str(ca_pem))
    keylog = ktls.KeyLog(cctx)
    fd = keylog.fd
    assert os.readlink(cctx.keylog_filename).startswith("/memfd:tb-tls-keylog")
    ssock = cctx.wrap_socket(
        socket.create_connection(("127.0.0.1", srv.port)), server_hostname="localhost"
    )
    assert os.fstat(fd).st_size > 0  # OpenSSL logged the secrets into memory
    t = ktls.switch_to_ktls(ssock, keylog)
    assert cctx.keylog_filename is None and keylog.fd == -1
    try:  # closed (and zeroed before); the number may already be reused by another fd
        assert not os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:tb-tls-keylog")
    except FileNotFoundError:
        pass
    t.send(b"x")
    t.close()
    srv.join()


def kernel_record(conn: ssl.SSLSocket, rtype: int, payload: bytes) -> None:
    """Send a non-data record through the server's kernel TX (TLS_SET_RECORD_TYPE cmsg)."""
    with socket.socket(fileno=os.dup(conn.fileno())) as raw:
        raw.sendmsg([payload], [(ktls.SOL_TLS, 1, bytes([rtype]))])


@pytest.mark.parametrize(
    "record,expect",
    [
        ((21, b"\x02\x0a"), "the server sent a TLS fatal alert: unexpected_message (10)"),
        ((22, b"\x18\x00\x00\x01\x00"), "KeyUpdate"),
        ((22, b"\x0d\x00\x00\x00"), "unexpected TLS handshake message 13"),
    ],
    ids=["alert", "keyupdate", "certificate-request"],
)
def test_non_data_records_end_the_session_with_the_reason(ca, record, expect):
    server_pem, ca_pem = ca
    payload = stream(50_000)

    def script(conn):
        conn.recv(1)
        conn.sendall(payload)
        kernel_record(conn, *record)
        conn.recv(1)  # wait for the client to close

    srv = Server(server_context(server_pem, "1.3", "AES-128-GCM", kernel_tx=True), script)
    t = connect(srv.url, tls_mode="ktls", cafile=str(ca_pem))
    try:
        t.send(b"x")
        assert read_all(t, len(payload)) == payload
        with pytest.raises(TransportError, match=re.escape(expect)) as exc:
            read_eof(t)
        if record[0] == 22 and record[1][0] == 24:
            assert isinstance(exc.value, ktls.KTLSRekeyError)
    finally:
        t.close()
    srv.join()


CBC = "ECDHE-ECDSA-AES128-SHA256"  # TLS 1.2 CBC: the kernel does not offload it


def test_auto_falls_back_to_userspace_for_a_cipher_the_kernel_lacks(ca, caplog):
    server_pem, ca_pem = ca
    srv = Server(server_context(server_pem, "1.2", CBC), echo_script(b"plain userspace"))
    with caplog.at_level("INFO", logger="tb.transport"):
        t = connect(srv.url, tls_mode="auto", cafile=str(ca_pem))
    try:
        assert t.kind == "tls"
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TLS ")]
        assert len(lines) == 1 and "userspace TLS (OpenSSL did not offload" in lines[0], lines
        t.send(b"x")
        assert read_all(t, 15) == b"plain userspace"
    finally:
        t.close()
    srv.join()


def test_ktls_mode_refuses_a_cipher_the_kernel_lacks(ca):
    server_pem, ca_pem = ca
    srv = Server(server_context(server_pem, "1.2", CBC), lambda c: c.recv(1))
    with pytest.raises(KTLSUnavailableError, match="--tls ktls: OpenSSL did not offload"):
        connect(srv.url, tls_mode="ktls", cafile=str(ca_pem))
    srv.join()


def test_auto_picks_ktls_with_one_log_line(ca, caplog):
    server_pem, ca_pem = ca
    srv = Server(server_context(server_pem, "1.3", "AES-256-GCM"), echo_script(b"kernel"))
    with caplog.at_level("INFO", logger="tb.transport"):
        t = connect(srv.url, tls_mode="auto", cafile=str(ca_pem))
    try:
        assert t.kind == "ktls"
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TLS ")]
        assert lines == [
            "TLS TLSv1.3 TLS_AES_256_GCM_SHA384: kernel TLS, AES-256-GCM; "
            "RX kernel (keys installed by tb), TX kernel (OpenSSL)"
        ]
        t.send(b"x")
        assert read_all(t, 6) == b"kernel"
    finally:
        t.close()
    srv.join()


# ----------------------------------------------------------------------------- HKDF (host too)


def test_hkdf_expand_label_matches_rfc8448():
    # RFC 8448 "Simple 1-RTT Handshake": server application traffic secret -> key, iv.
    secret = bytes.fromhex("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643")
    key = ktls.hkdf_expand_label(secret, b"key", 16, "sha256")
    assert key.hex() == "9f02283b6c9c07efc26bb9f2ac92e356"
    assert ktls.hkdf_expand_label(secret, b"iv", 12, "sha256").hex() == "cf782b88dd83549aadf1e984"


# ----------------------------------------------------------------------------- tb run over wss


class WssReplay(e2e.Replay):
    """`tb replay --tls-...` as a subprocess, with its own OpenSSL configuration (`env`)."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            e2e.tb_cmd("replay", "--listen", "127.0.0.1:0", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (wss://\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"replay did not start: {line!r} {self.proc.stderr.read()}")
        self.url = m.group(1)


@pytest.fixture(scope="module")
def feed(ktls_kernel, tmp_path_factory):
    from tb.capture import read_capture

    cap = tmp_path_factory.mktemp("feed") / "feed.tbcap"
    proc = e2e.run_tb(["gen", str(cap), "--trades", "8000", "--symbols", "1500", "--seed", "5"])
    assert proc.returncode == 0, proc.stderr
    return cap, list(read_capture(str(cap)))


OPENSSL_CONF = """openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
{settings}
"""

# What the replay server allows (through OPENSSL_CONF, which Python's ssl honours) -> what the
# client must end up with.
SERVER_TLS = {
    "1.3-aes256": ("", "TLSv1.3 TLS_AES_256_GCM_SHA384: kernel TLS, AES-256-GCM"),
    "1.3-chacha": (
        "Ciphersuites = TLS_CHACHA20_POLY1305_SHA256",
        "TLSv1.3 TLS_CHACHA20_POLY1305_SHA256: kernel TLS, ChaCha20-Poly1305",
    ),
    "1.2-aes256": ("MaxProtocol = TLSv1.2", "TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384: kernel TLS"),
}


@pytest.mark.parametrize(
    "tls,server_ktls",
    [("1.3-aes256", False), ("1.3-aes256", True), ("1.3-chacha", True), ("1.2-aes256", True)],
    ids=["1.3-aes256-replay-userspace", "1.3-aes256-replay-ktls", "1.3-chacha-replay-ktls",
         "1.2-aes256-replay-ktls"],
)  # fmt: skip
def test_tb_run_over_wss_with_ktls_delivers_every_trade(tmp_path, ca, feed, tls, server_ktls):
    server_pem, ca_pem = ca
    cap, payloads = feed
    conf = tmp_path / "openssl.cnf"
    settings, expect = SERVER_TLS[tls]
    conf.write_text(OPENSSL_CONF.format(settings=settings))
    args = [str(cap), "--close-after", "--tls-cert", str(server_pem)]
    replay = WssReplay(
        *args, *(["--tls-ktls"] if server_ktls else []), env={"OPENSSL_CONF": str(conf)}
    )
    try:
        log = tmp_path / "log.jsonl"
        proc = e2e.run_tb(
            ["run", replay.url + "/stocks", "--pipes", "3", "--key", "k", "--once",
             "--tls", "ktls", "--cafile", str(ca_pem), "--workdir", str(tmp_path),
             "--shutdown-timeout", "200",  # the verifying worker is slow under TCG
             "--", sys.executable, e2e.VERIFY_WORKER, str(log)],
            timeout=240,
        )  # fmt: skip
    finally:
        replay.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    e2e.check_delivery(e2e.read_log(log), payloads, 3)
    chosen = [line for line in proc.stderr.splitlines() if "tb.transport INFO: TLS " in line]
    assert len(chosen) == 1 and expect in chosen[0], chosen
    assert "Traceback" not in proc.stderr


def test_tb_check_reports_ktls_on_with_its_ciphers(ktls_kernel):
    import json

    proc = e2e.run_tb(["check", "--json"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    entry = next(c for c in report["checks"] if c["name"] == "kTLS")
    assert entry["on"] and "kTLS" in report["fast_paths"], entry
    for offered in ("TLS1.2 AES-128-GCM", "TLS1.3 AES-256-GCM", "TLS1.3 ChaCha20-Poly1305"):
        assert offered in entry["detail"], entry

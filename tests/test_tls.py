"""wss:// on the host: userspace TLS end to end, certificate failures, `tb check`.

Real processes on 127.0.0.1: `tb replay --tls-cert/--tls-key` with certificates made by trustme,
and `tb run wss://...` with the verifying test worker. Kernel TLS itself is tests/test_ktls.py.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import sys
import threading
from pathlib import Path

import harness as e2e  # tests/harness.py: real tb processes on loopback
import pytest

from tb.capture import read_capture
from tb.certs import self_signed_context
from tb.transport import KTLSUnavailableError, TLSVerifyError, connect, ktls, parse_url


@pytest.fixture
def wss_replay(replay_factory):
    """`tb replay ... --tls-*` processes (harness.Replay), stopped after the test."""
    return replay_factory


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """(server cert+key PEM, its CA, another CA) made by trustme."""
    import trustme

    d = tmp_path_factory.mktemp("certs")
    ca, other = trustme.CA(), trustme.CA()
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(d / "server.pem")
    )
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other.cert_pem.write_to_path(str(d / "other-ca.pem"))
    return d / "server.pem", d / "ca.pem", d / "other-ca.pem"


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("cap") / "burst.tbcap"
    proc = e2e.run_tb(["gen", str(path), "--trades", "20000", "--symbols", "1500", "--seed", "7"])
    assert proc.returncode == 0, proc.stderr
    return path, list(read_capture(str(path)))


def run_wss(url: str, tmp_path: Path, *extra: str, pipes: int = 3):
    log = tmp_path / "log.jsonl"
    proc = e2e.run_tb(
        ["run", url + "/stocks", "--pipes", str(pipes), "--key", "k", "--once",
         "--workdir", str(tmp_path), *extra, "--", sys.executable, e2e.VERIFY_WORKER, str(log)]
    )  # fmt: skip
    return proc, log


@pytest.mark.parametrize(
    "mode,loop", [("userspace", "epoll"), ("auto", "epoll"), ("userspace", "uring")]
)
def test_wss_userspace_tls_delivers_every_trade(tmp_path, certs, capture, wss_replay, mode, loop):
    server_pem, ca_pem, _ = certs
    path, payloads = capture
    replay = wss_replay(str(path), "--close-after", "--tls-cert", str(server_pem))
    proc, log = run_wss(
        replay.url, tmp_path, "--cafile", str(ca_pem), "--tls", mode, "--loop", loop
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    e2e.check_delivery(e2e.read_log(log), payloads, 3)
    chosen = [line for line in proc.stderr.splitlines() if "tb.transport INFO: TLS " in line]
    assert len(chosen) == 1, proc.stderr  # one line says which TLS and why
    if ktls.kernel_missing():
        why = "--tls userspace" if mode == "userspace" else "modprobe tls"
        assert "userspace TLS (" in chosen[0] and why in chosen[0], chosen
    assert "Traceback" not in proc.stderr


def test_wrong_ca_exits_6_with_one_clear_line(tmp_path, certs, capture, wss_replay):
    server_pem, _, other_ca = certs
    replay = wss_replay(str(capture[0]), "--tls-cert", str(server_pem))
    proc, _ = run_wss(replay.url, tmp_path, "--cafile", str(other_ca))
    assert proc.returncode == 6, proc.stderr
    assert "did not verify: unable to get local issuer certificate" in proc.stderr
    assert "--cafile" in proc.stderr and "--insecure" in proc.stderr  # says what to do
    assert "Traceback" not in proc.stderr


def test_self_signed_replay_prints_its_cafile_and_the_system_store_rejects_it(
    tmp_path, capture, wss_replay
):
    path, payloads = capture
    replay = wss_replay(str(path), "--close-after", "--tls-self-signed")
    first = replay.proc.stderr.readline()  # logged before "listening on"
    m = re.search(r"self-signed certificate made with (.+?): tb run --cafile (\S+)", first)
    assert m, first
    proc, _ = run_wss(replay.url, tmp_path)  # verified against the system store by default
    assert proc.returncode == 6 and "did not verify" in proc.stderr, proc.stderr
    proc, log = run_wss(replay.url, tmp_path, "--cafile", m.group(2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    e2e.check_delivery(e2e.read_log(log), payloads, 3)
    proc, log = run_wss(replay.url, tmp_path, "--insecure")
    assert proc.returncode == 0, proc.stderr[-3000:]
    e2e.check_delivery(e2e.read_log(log), payloads, 3)


def test_self_signed_context_verifies_with_its_cert_and_keeps_the_key_off_disk(tmp_path):
    cert = tmp_path / "cert.pem"
    sctx, how = self_signed_context(str(cert))
    assert how in ("the cryptography package", "openssl req")
    assert list(tmp_path.iterdir()) == [cert] and "PRIVATE KEY" not in cert.read_text()
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        port = lsock.getsockname()[1]

        def serve():
            conn, _ = lsock.accept()
            with sctx.wrap_socket(conn, server_side=True) as s:
                s.sendall(b"hi")

        t = threading.Thread(target=serve)
        t.start()
        tr = connect(parse_url(f"wss://localhost:{port}/"), cafile=str(cert), tls_mode="userspace")
        try:
            assert tr.kind == "tls"
            import select

            got = None
            for _ in range(100):  # readable first for the session tickets, then for the data
                select.select([tr.fd], [], [], 0.1)
                got = tr.recv_into(memoryview(bytearray(10)))
                if got is not None:
                    break
            assert got == 2
        finally:
            tr.close()
            t.join(10)


def test_connect_raises_tls_verify_error_for_an_unknown_ca(tmp_path):
    sctx, _ = self_signed_context(str(tmp_path / "cert.pem"))
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        port = lsock.getsockname()[1]

        def serve():
            conn, _ = lsock.accept()
            try:
                sctx.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

        t = threading.Thread(target=serve)
        t.start()
        with pytest.raises(TLSVerifyError, match="did not verify"):
            connect(parse_url(f"wss://127.0.0.1:{port}/"), tls_mode="auto")
        t.join(10)


def test_tls_ktls_fails_clearly_where_the_kernel_has_none():
    if not ktls.kernel_missing():
        pytest.skip("this kernel has kTLS (tests/test_ktls.py covers it)")
    with pytest.raises(KTLSUnavailableError, match=r"--tls ktls: .*modprobe tls"):
        connect(parse_url("wss://127.0.0.1:9/"), tls_mode="ktls")


def test_tb_check_runs_and_names_the_fix():
    proc = e2e.run_tb(["check"])
    assert proc.returncode == 0, proc.stderr
    assert "tb can run here; fast paths on:" in proc.stdout
    for name in ("kTLS", "io_uring", "pipes", "rmem_max", "cpus", "slice"):
        assert re.search(rf"^{name} +(on|off) ", proc.stdout, re.M), proc.stdout
    from tb.loop import available_loops

    uring_on = re.search(r"^io_uring +on ", proc.stdout, re.M) is not None
    assert uring_on is (available_loops()["uring"] == ""), proc.stdout
    if ktls.kernel_missing():
        assert re.search(r"^kTLS +off ", proc.stdout, re.M)
        assert "modprobe tls" in proc.stdout
        assert "userspace TLS" in proc.stdout
    report = json.loads(e2e.run_tb(["check", "--json"]).stdout)
    assert report["can_run"] is True
    ktls_entry = next(c for c in report["checks"] if c["name"] == "kTLS")
    assert ktls_entry["on"] is (ktls.kernel_missing() is None)

"""tb.certs: the server side's certificates, and `tb replay`'s certificate flags as a real process."""

from __future__ import annotations

import harness as e2e  # tests/harness.py: real tb processes on loopback
import pytest

from tb.certs import CertError, server_context


def test_a_missing_certificate_raises_cert_error_with_the_reason(tmp_path):
    with pytest.raises(CertError, match="cannot load the TLS certificate/key: .*No such file"):
        server_context(str(tmp_path / "absent.pem"))


def test_a_file_that_is_not_a_certificate_raises_cert_error(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(CertError, match="cannot load the TLS certificate/key"):
        server_context(str(junk))


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--tls-cert", "{missing}"], "cannot load the TLS certificate/key"),
        (["--tls-cert", "{missing}", "--tls-self-signed"], "not both"),
        (["--tls-key", "{missing}"], "--tls-key needs --tls-cert"),
        (["--tls-ktls"], "--tls-ktls needs --tls-cert or --tls-self-signed"),
    ],
)
def test_replay_certificate_flags_fail_with_one_line_and_exit_2(tmp_path, flags, message):
    args = [f.format(missing=tmp_path / "absent.pem") for f in flags]
    proc = e2e.run_tb(["replay", "--listen", "127.0.0.1:0", "--gen-trades", "10", *args])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("tb replay: ") and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr

"""Server certificates for tb's own wss:// servers (`tb replay`, `tb profile`): the server side.

Theory of operation: a server context is either loaded from PEM files the user gives
(`server_context`) or made on the spot with a throwaway self-signed certificate for localhost and
127.0.0.1 (`self_signed_context`), for tests and demos on loopback. The throwaway certificate is
public and written where a client's --cafile can find it; its private key never touches disk: it
reaches OpenSSL through a memfd (`/proc/self/fd/N`), closed once loaded. The certificate is made
with the cryptography package when it is installed, else with the `openssl req` command (in a
private directory under /dev/shm, a RAM file system, removed at once). `ktls=True` asks OpenSSL
to offload the server's sends to the kernel (SSL_OP_ENABLE_KTLS); it has no effect on a kernel
without kTLS. The client side, which verifies certificates, is tb.transport.
"""

from __future__ import annotations

import os
import ssl

__all__ = ["CertError", "server_context", "self_signed_context"]

SSL_OP_ENABLE_KTLS = getattr(ssl, "OP_ENABLE_KTLS", 0x8)  # (named in ssl from Python 3.12)
SELF_SIGNED_NAME = "tb replay (self-signed)"
SELF_SIGNED_DAYS = 2  # long enough for any run, short enough to be worthless if it leaks


class CertError(Exception):
    """A server certificate or key cannot be loaded or made (the message says why)."""


def server_context(
    certfile: str, keyfile: str | None = None, *, ktls: bool = False
) -> ssl.SSLContext:
    """A TLS server context from PEM files; `ktls` asks OpenSSL for kernel TX (SSL_OP_ENABLE_KTLS).

    Raises:
        CertError: the files cannot be read or do not match.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise CertError(f"cannot load the TLS certificate/key: {exc}") from None
    if ktls:
        ctx.options |= SSL_OP_ENABLE_KTLS  # OpenSSL 3.0 offloads TX for TLS 1.2 and 1.3
    return ctx


def self_signed_context(cert_out: str, *, ktls: bool = False) -> tuple[ssl.SSLContext, str]:
    """A server context with a fresh self-signed certificate for localhost and 127.0.0.1.

    The certificate (public) is written to `cert_out` for clients' --cafile; the private key never
    touches disk (it goes to OpenSSL through a memfd). Returns (context, how it was made).

    Raises:
        CertError: neither the cryptography package nor the openssl command could make one.
    """
    try:
        cert_pem, key_pem = _self_signed_cryptography()
        how = "the cryptography package"
    except ImportError:
        cert_pem, key_pem = _self_signed_openssl()
        how = "openssl req"
    with open(cert_out, "wb") as f:
        f.write(cert_pem)
    fd = os.memfd_create("tb-replay-key", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem)
        ctx = server_context(cert_out, f"/proc/self/fd/{fd}", ktls=ktls)
    finally:
        os.close(fd)
    return ctx, how


def _self_signed_cryptography() -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) made with the cryptography package (ImportError without it)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SELF_SIGNED_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # (clients with a slow clock)
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _self_signed_openssl() -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) made by the openssl command in a private RAM directory."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tb-cert-", dir="/dev/shm") as d:
        args = [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem",
            "-days", str(SELF_SIGNED_DAYS), "-subj", f"/CN={SELF_SIGNED_NAME}",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ]  # fmt: skip
        try:
            subprocess.run(args, check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise CertError(
                f"cannot make a self-signed certificate: {exc} (pip install cryptography, or "
                "install the openssl command)"
            ) from None
        with open(f"{d}/cert.pem", "rb") as c, open(f"{d}/key.pem", "rb") as k:
            return c.read(), k.read()

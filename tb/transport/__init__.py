"""Transports: connecting to the feed, and how bytes come off the network into tb's arena.

Theory of operation: `connect(url)` makes a connected, handshaken transport before the loop sees
it (TCP, then TLS for wss://); from then on it is a nonblocking byte stream (tb.transport.base:
`Transport`, the interface, and the `TransportError` family). Connecting is blocking with a
timeout: it happens only between sessions. For wss:// the certificate is verified by default
(`cafile` for a private CA, `insecure` for a test server), and `tls_mode` picks how the records
are decrypted:

    userspace   OpenSSL, through the SSLSocket (base.Transport, kind "tls")
    ktls        the kernel (tb.transport.ktls): OpenSSL does the handshake, then hands the
                record layer to the kernel before anything is read; refused (exit 6) where the
                kernel or the negotiated suite cannot
    auto        the kernel when it can, else userspace

`connect` logs one line saying which TLS was chosen and why. The layout: base (the interface and
errors) <- ktls (a kind of transport) <- this module (the choice), so nothing imports back.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from tb.transport import ktls
from tb.transport.base import KTLSUnavailableError, TLSVerifyError, Transport, TransportError

__all__ = [
    "TransportError",
    "TLSVerifyError",
    "KTLSUnavailableError",
    "FeedURL",
    "parse_url",
    "Transport",
    "connect",
    "TLS_MODES",
]

log = logging.getLogger("tb.transport")

TLS_MODES = ("auto", "ktls", "userspace")


@dataclass(slots=True, frozen=True)
class FeedURL:
    scheme: str  # "ws" or "wss"
    host: str
    port: int
    path: str  # path and query, at least "/"

    @property
    def tls(self) -> bool:
        return self.scheme == "wss"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.path}"


def parse_url(url: str) -> FeedURL:
    """Parse a ws:// or wss:// URL; raise ValueError with what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"URL must start with ws:// or wss://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"URL has no host: {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"URL has a bad port: {url!r}") from None
    if port is None:
        port = 443 if parts.scheme == "wss" else 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return FeedURL(parts.scheme, parts.hostname, port, path)


def connect(
    url: FeedURL,
    *,
    timeout: float = 10.0,
    tls: bool | None = None,
    tls_mode: str = "auto",
    cafile: str | None = None,
    insecure: bool = False,
    rcvbuf: int = 4 << 20,
) -> Transport:
    """Connect (and TLS-handshake) to `url`; return a nonblocking Transport.

    Raises:
        TransportError: DNS, TCP or TLS failure, with the reason.
        TLSVerifyError: the certificate did not verify.
    """
    use_tls = url.tls if tls is None else tls
    if use_tls and tls_mode not in TLS_MODES:
        raise ValueError(f"tls_mode must be one of {', '.join(TLS_MODES)}, got {tls_mode!r}")
    if use_tls and tls_mode == "ktls":
        why_not = ktls.kernel_missing()
        if why_not:  # before connecting: no point in a handshake that cannot be used
            raise KTLSUnavailableError(f"--tls ktls: {why_not}")
    try:
        sock = socket.create_connection((url.host, url.port), timeout=timeout)
    except socket.gaierror as exc:
        raise TransportError(f"cannot resolve {url.host}: {exc.strerror}") from None
    except TimeoutError:
        raise TransportError(
            f"connect to {url.host}:{url.port} timed out after {timeout:g} s"
        ) from None
    except OSError as exc:
        raise TransportError(
            f"connect to {url.host}:{url.port} failed: {exc.strerror or exc}"
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    except OSError:
        pass  # the kernel caps it at net.core.rmem_max; a smaller buffer still works
    if not use_tls:
        sock.setblocking(False)
        return Transport(sock, "tcp")
    return _tls_connect(sock, url, tls_mode=tls_mode, cafile=cafile, insecure=insecure)


def _tls_connect(
    sock: socket.socket, url: FeedURL, *, tls_mode: str, cafile: str | None, insecure: bool
) -> Transport:
    """Handshake on the connected `sock`, then pick kernel or userspace TLS (one log line why)."""
    # One context per connection: its key log (TLS 1.3 kTLS) then holds this connection's
    # secrets only, and lives in memory (a memfd), never in a file.
    try:
        ctx = ssl.create_default_context(cafile=cafile)
    except OSError as exc:  # (ssl.SSLError is one)
        sock.close()
        raise TransportError(f"cannot load the CA bundle {cafile}: {exc}") from None
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    why_not = None
    if tls_mode == "userspace":
        why_not = "--tls userspace"
    else:
        why_not = ktls.kernel_missing()
        if why_not and tls_mode == "ktls":
            sock.close()
            raise KTLSUnavailableError(f"--tls ktls: {why_not}")
    keylog = None
    if why_not is None:
        ctx.options |= ktls.SSL_OP_ENABLE_KTLS  # OpenSSL: TX+RX for TLS 1.2, TX for TLS 1.3
        keylog = ktls.KeyLog(ctx)
    try:
        ssock = ctx.wrap_socket(sock, server_hostname=url.host)
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        if keylog is not None:
            keylog.take()  # wipe whatever was logged
        if isinstance(exc, ssl.SSLCertVerificationError):
            raise TLSVerifyError(
                f"TLS certificate of {url.host} did not verify: "
                f"{exc.verify_message or exc.reason}"
                " (use --cafile for a private CA, or --insecure for a test server)"
            ) from None
        raise TransportError(f"TLS handshake with {url.host} failed: {exc}") from None
    suite = (ssock.cipher() or ("?",))[0]
    if keylog is not None:
        try:
            transport = ktls.switch_to_ktls(ssock, keylog)
        except ktls.KTLSUnavailable as exc:
            why_not = str(exc)
            if tls_mode == "ktls":
                ssock.close()
                raise KTLSUnavailableError(f"--tls ktls: {why_not}") from None
        else:
            ssock.setblocking(False)
            log.info("TLS %s", transport.info.describe())
            return transport
    ssock.setblocking(False)
    log.info("TLS %s %s: userspace TLS (%s)", ssock.version(), suite, why_not)
    return Transport(ssock, "tls")

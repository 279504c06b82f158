"""Transports: how bytes come off the network into tb's receive arena.

Theory of operation: a transport is connected and handshaken (TCP, then TLS when asked) before
the loop sees it; from then on it is a nonblocking fd with `recv_into(view) -> n` (0 at EOF,
`None` when nothing is ready) and `send(data) -> n`. Plain TCP reads the socket straight into the
arena; userspace TLS reads through `SSLSocket.recv_into`, which may hold decrypted bytes that the
fd no longer shows as readable, so `recv_into` keeps reading until the socket and the SSL object
are empty or the view is full; kernel TLS (tb.ktls, `--tls ktls|auto`) hands the record layer to
the kernel after the handshake and reads plaintext with `recvmsg_into`, no copy through OpenSSL.
Connecting is blocking with a timeout: it happens only between sessions. `--tls auto` logs one
line saying which TLS was chosen and why.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "TransportError",
    "TLSVerifyError",
    "KTLSUnavailableError",
    "FeedURL",
    "parse_url",
    "Transport",
    "connect",
]

log = logging.getLogger("tb.transport")

TLS_MODES = ("auto", "ktls", "userspace")


class TransportError(Exception):
    """The connection could not be made or broke."""


class TLSVerifyError(TransportError):
    """The server's certificate did not verify (not retried: exit code 6)."""


class KTLSUnavailableError(TLSVerifyError):
    """`--tls ktls` was asked for and this kernel or connection cannot do it (not retried: exit
    code 6, like a certificate failure: retrying would not change the answer)."""


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


class Transport:
    """A connected, nonblocking byte stream: plain TCP or userspace TLS (kernel TLS: tb.ktls)."""

    def __init__(self, sock: socket.socket, kind: str) -> None:
        self.sock = sock
        self.kind = kind  # "tcp", "tls", "ktls"
        self.fd = sock.fileno()
        self._tls = isinstance(sock, ssl.SSLSocket)

    def recv_into(self, view: memoryview) -> int | None:
        """Read into `view`; return bytes read, 0 at EOF, None if nothing was ready."""
        if not self._tls:
            try:
                return self.sock.recv_into(view)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                raise TransportError(f"receive failed: {exc.strerror or exc}") from None
        got = 0
        size = len(view)
        sock = self.sock
        while got < size:
            try:
                n = sock.recv_into(view[got:])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            except ssl.SSLZeroReturnError:
                return got or 0
            except (ssl.SSLError, OSError) as exc:
                if got:
                    return got
                raise TransportError(f"TLS receive failed: {exc}") from None
            if n == 0:
                return got
            got += n
            # No break when pending() is 0: each SSL read returns at most one 16 KiB record, so
            # keep reading until the socket is empty (SSLWantReadError) or the view is full.
            # Bigger reads mean bigger routing batches (measured in the kTLS VM: stopping at
            # pending() == 0 gave ~16 KiB per call against ~170 KiB per kTLS recvmsg).
        return got if got else None

    def send(self, data: bytes | memoryview) -> int:
        """Send what the socket takes now; return the count (0 if it would block)."""
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except OSError as exc:
            raise TransportError(f"send failed: {exc.strerror or exc}") from None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


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
        from tb.ktls import kernel_missing

        why_not = kernel_missing()
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
    from tb import ktls

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

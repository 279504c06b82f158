"""What every transport is: a connected, nonblocking byte stream, and the errors it raises.

Theory of operation: once connected and handshaken (tb.transport.connect), a transport is a
nonblocking fd with `recv_into(view) -> n` (0 at EOF, None when nothing is ready), `send(data)
-> n` (0 when the socket is full) and `close()`. `Transport` is that interface, implemented for
plain TCP and userspace TLS; tb.transport.ktls subclasses it for kernel TLS. Plain TCP reads
the socket straight into the caller's view. Userspace TLS reads through `SSLSocket.recv_into`,
which returns at most one TLS record per call and may hold decrypted bytes that the fd no longer
shows as readable, so `recv_into` keeps reading until the SSL object and the socket are empty
or the view is full: a wake-up that reads everything waiting makes one large routing batch
instead of one per record.

Errors are one family: `TransportError` (the connection broke or could not be made: the
balancer reconnects), with `TLSVerifyError` and `KTLSUnavailableError` for what retrying would
not change (exit code 6).
"""

from __future__ import annotations

import socket
import ssl

__all__ = ["TransportError", "TLSVerifyError", "KTLSUnavailableError", "Transport"]


class TransportError(Exception):
    """The connection could not be made or broke."""


class TLSVerifyError(TransportError):
    """The server's certificate did not verify (not retried: exit code 6)."""


class KTLSUnavailableError(TLSVerifyError):
    """`--tls ktls` was asked for and this kernel or connection cannot do it (not retried: exit
    code 6, like a certificate failure: retrying would not change the answer)."""


class Transport:
    """A connected, nonblocking byte stream: plain TCP or userspace TLS (kernel TLS: ktls.py)."""

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
            # No break when pending() is 0: each SSL read returns at most one record, so keep
            # reading until the socket is empty (SSLWantReadError) or the view is full: bigger
            # reads mean bigger routing batches.
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

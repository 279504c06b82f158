"""Kernel TLS (kTLS): the handshake in userspace, then the kernel decrypts and tb reads plaintext.

Theory of operation: `tb.transport.connect` does the TLS handshake with Python's `ssl` (OpenSSL
3.0), then hands the record layer to the kernel before anything is read through the SSL object:

- TLS 1.2: the context carries SSL_OP_ENABLE_KTLS (0x8, `ssl.OP_ENABLE_KTLS` only from 3.12), so
  OpenSSL sets the "tls" TCP ULP and programs TLS_TX and TLS_RX itself at the end of the handshake.
- TLS 1.3: OpenSSL 3.0 programs TLS_TX only. tb programs TLS_RX itself: the server's application
  traffic secret comes from the context's key log, HKDF-Expand-Label gives key and iv (with the
  suite's hash), and `setsockopt(SOL_TLS, TLS_RX, crypto_info)` installs them with rec_seq 0 -- the
  client has read no record under that key yet. If OpenSSL did not take TX, tb keeps sending
  through the SSLSocket (OpenSSL's own record layer; with the ULP on and only RX programmed the
  kernel passes those records through untouched). Both TX variants are tested in the VM
  (tests/test_ktls.py, `tx=openssl|userspace`); tb never programs TX itself, so OpenSSL and the
  kernel never both own the sequence numbers of one direction.
- Secrets never touch disk: the key log is a memfd (`/proc/self/fd/N`), one per connection (Python
  does not expose client_random, so one context per connection is how the lines are matched), read
  and wiped right after the handshake.

From then on the fd is read with `recvmsg_into` straight into the caller's view. Each call asks for
the record type (cmsg SOL_TLS/TLS_GET_RECORD_TYPE); the kernel never merges records of different
types into one read. Application data (23) is returned; handshake records (22) are parsed:
NewSessionTicket is skipped, KeyUpdate ends the session (6.1's kTLS RX cannot re-key: a clean
reconnect reason); alerts (21) are close_notify -> EOF, anything else -> TransportError naming it.
"""

from __future__ import annotations

import errno
import hmac
import logging
import os
import socket
import ssl
import struct
from dataclasses import dataclass

from tb.transport.base import Transport, TransportError

__all__ = [
    "KTLSUnavailable",
    "KTLSRekeyError",
    "KTLSTransport",
    "KeyLog",
    "SSL_OP_ENABLE_KTLS",
    "kernel_missing",
    "switch_to_ktls",
    "hkdf_expand_label",
    "tls13_crypto_info",
    "TLS13_SUITES",
]

log = logging.getLogger("tb.transport")

# Linux uapi (include/uapi/linux/tls.h, netinet/tcp.h).
TCP_ULP = 31
SOL_TLS = 282
TLS_TX, TLS_RX = 1, 2
TLS_GET_RECORD_TYPE = 2
TLS_1_2_VERSION, TLS_1_3_VERSION = 0x0303, 0x0304
CIPHER_AES_GCM_128, CIPHER_AES_GCM_256, CIPHER_CHACHA20_POLY1305 = 51, 52, 54
SSL_OP_ENABLE_KTLS = getattr(ssl, "OP_ENABLE_KTLS", 0x8)

REC_ALERT, REC_HANDSHAKE, REC_DATA = 21, 22, 23
HS_NEW_SESSION_TICKET, HS_KEY_UPDATE = 4, 24

# TLS 1.3 suite -> (kernel cipher_type, key length, HKDF hash). The kernel's other TLS 1.3 ciphers
# (CCM, SM4) are not offered by OpenSSL by default and are left to userspace.
TLS13_SUITES = {
    "TLS_AES_128_GCM_SHA256": (CIPHER_AES_GCM_128, 16, "sha256"),
    "TLS_AES_256_GCM_SHA384": (CIPHER_AES_GCM_256, 32, "sha384"),
    "TLS_CHACHA20_POLY1305_SHA256": (CIPHER_CHACHA20_POLY1305, 32, "sha256"),
}
CIPHER_NAMES = {
    CIPHER_AES_GCM_128: "AES-128-GCM",
    CIPHER_AES_GCM_256: "AES-256-GCM",
    CIPHER_CHACHA20_POLY1305: "ChaCha20-Poly1305",
}

_CMSG_SPACE = socket.CMSG_SPACE(1)
_ALERTS = {a.value: a.name.removeprefix("ALERT_DESCRIPTION_").lower() for a in ssl.AlertDescription}


class KTLSUnavailable(Exception):
    """kTLS cannot be used for this connection (the message says why); userspace TLS still can."""


class KTLSRekeyError(TransportError):
    """The server sent a TLS 1.3 KeyUpdate, which kernel TLS RX (Linux 6.1) cannot follow."""


_kernel_missing_cache: list[str | None] = []


def kernel_missing() -> str | None:
    """None when this kernel offers the "tls" TCP ULP, else why not (with the fix). Cached."""
    if _kernel_missing_cache:
        return _kernel_missing_cache[0]
    reason = None
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_TCP, TCP_ULP, b"tls")
    except OSError as exc:
        # ENOTCONN: the ULP exists, it only needs an established socket.
        if exc.errno != errno.ENOTCONN:
            reason = (
                f"kernel has no TLS offload: setsockopt(TCP_ULP, 'tls') -> "
                f"{errno.errorcode.get(exc.errno, exc.errno)} (try: modprobe tls; "
                "it needs CONFIG_TLS)"
            )
    finally:
        s.close()
    _kernel_missing_cache.append(reason)
    return reason


def hkdf_expand_label(secret: bytes, label: bytes, length: int, hashname: str) -> bytes:
    """TLS 1.3 HKDF-Expand-Label(secret, label, "", length) (RFC 8446 section 7.1)."""
    full = b"tls13 " + label
    info = struct.pack(">HB", length, len(full)) + full + b"\x00"
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([i]), hashname).digest()
        out, i = out + block, i + 1
    return out[:length]


def tls13_crypto_info(suite: str, traffic_secret: bytes, rec_seq: int = 0) -> bytes:
    """The kernel's struct tls12_crypto_info_* for a TLS 1.3 traffic secret.

    Raises:
        KTLSUnavailable: the suite has no kernel cipher here.
    """
    try:
        cipher_type, keylen, hashname = TLS13_SUITES[suite]
    except KeyError:
        raise KTLSUnavailable(f"kernel TLS does not offload {suite}") from None
    key = hkdf_expand_label(traffic_secret, b"key", keylen, hashname)
    iv = hkdf_expand_label(traffic_secret, b"iv", 12, hashname)
    head = struct.pack("=HH", TLS_1_3_VERSION, cipher_type)
    seq = struct.pack(">Q", rec_seq)
    if cipher_type == CIPHER_CHACHA20_POLY1305:  # iv[12] key[32] rec_seq[8]
        return head + iv + key + seq
    return head + iv[4:] + key + iv[:4] + seq  # iv[8] key[16|32] salt[4] rec_seq[8]


class KeyLog:
    """An in-memory (memfd) NSS key log for one context; never a file on disk."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.fd = os.memfd_create("tb-tls-keylog", os.MFD_CLOEXEC)
        # OpenSSL opens the path itself (append mode): a fresh description of the same memfd.
        ctx.keylog_filename = f"/proc/self/fd/{self.fd}"

    def take(self) -> dict[str, bytearray]:
        """Read the secrets {label: secret}, then wipe and close the log and stop logging."""
        self.ctx.keylog_filename = None  # closes OpenSSL's handle: nothing more is logged
        size = os.fstat(self.fd).st_size
        buf = bytearray(size)
        os.preadv(self.fd, [buf], 0)
        os.pwrite(self.fd, bytes(size), 0)  # zero the pages before they go back to the kernel
        self.close()
        found: dict[str, bytearray] = {}
        for line in buf.split(b"\n"):
            if not line or line.startswith(b"#"):  # Python writes a "# TLS secrets log" header
                continue
            parts = line.split()
            if len(parts) == 3:
                found[parts[0].decode()] = bytearray.fromhex(parts[2].decode())
        buf[:] = bytes(len(buf))
        return found

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _ulp(sock: socket.socket) -> bytes:
    try:
        return sock.getsockopt(socket.SOL_TCP, TCP_ULP, 16).rstrip(b"\0")
    except OSError:
        return b""


def ktls_direction(sock: socket.socket, direction: int) -> tuple[int, int] | None:
    """(version, cipher_type) the kernel has for TLS_TX/TLS_RX, or None if not programmed."""
    try:
        return struct.unpack("=HH", sock.getsockopt(SOL_TLS, direction, 4))
    except OSError as exc:  # EBUSY: ULP set, direction not configured; EOPNOTSUPP: no ULP
        if exc.errno in (errno.EBUSY, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.ENOENT):
            return None
        raise


@dataclass(slots=True, frozen=True)
class KTLSInfo:
    version: str  # "TLSv1.2" / "TLSv1.3"
    suite: str
    cipher: str  # kernel cipher name, e.g. "AES-256-GCM"
    rx: str  # who programmed RX: "openssl" or "tb"
    tx: str  # "kernel" (OpenSSL's offload) or "userspace" (through the SSLSocket)

    def describe(self) -> str:
        rx = "kernel (OpenSSL)" if self.rx == "openssl" else "kernel (keys installed by tb)"
        tx = "kernel (OpenSSL)" if self.tx == "kernel" else "userspace (OpenSSL)"
        return f"{self.version} {self.suite}: kernel TLS, {self.cipher}; RX {rx}, TX {tx}"


def switch_to_ktls(ssock: ssl.SSLSocket, keylog: KeyLog | None) -> KTLSTransport:
    """Hand a freshly handshaken SSLSocket's receive side to the kernel.

    Call right after the handshake, before any read through `ssock`. `keylog` (for TLS 1.3) is
    consumed and wiped whatever happens.

    Raises:
        KTLSUnavailable: this connection cannot use kTLS; `ssock` is untouched and still usable
        for userspace TLS (unless the message says the TLS_RX setsockopt itself failed).
    """
    secrets = keylog.take() if keylog is not None else {}
    try:
        if ssock.pending():
            raise KTLSUnavailable(f"OpenSSL already holds {ssock.pending()} decrypted bytes")
        version = ssock.version()
        suite = (ssock.cipher() or ("?",))[0]
        raw = socket.socket(ssock.family, ssock.type, ssock.proto, fileno=os.dup(ssock.fileno()))
        try:
            info = _program_rx(raw, version, suite, secrets)
        except BaseException:
            raw.close()
            raise
        return KTLSTransport(ssock, raw, info)
    finally:
        for secret in secrets.values():
            secret[:] = bytes(len(secret))


def _program_rx(raw: socket.socket, version: str | None, suite: str, secrets: dict) -> KTLSInfo:
    tx = "kernel" if _ulp(raw) == b"tls" and ktls_direction(raw, TLS_TX) else "userspace"
    if version == "TLSv1.2":
        rx = ktls_direction(raw, TLS_RX) if _ulp(raw) == b"tls" else None
        if rx is None:
            raise KTLSUnavailable(f"OpenSSL did not offload {suite} to the kernel (TLSv1.2)")
        return KTLSInfo(version, suite, CIPHER_NAMES.get(rx[1], str(rx[1])), "openssl", tx)
    if version != "TLSv1.3":
        raise KTLSUnavailable(f"kernel TLS needs TLSv1.2 or TLSv1.3, the server chose {version}")
    if suite not in TLS13_SUITES:
        raise KTLSUnavailable(f"kernel TLS does not offload {suite}")
    secret = secrets.get("SERVER_TRAFFIC_SECRET_0")
    if secret is None:
        raise KTLSUnavailable("the key log has no SERVER_TRAFFIC_SECRET_0")
    if _ulp(raw) != b"tls":
        try:
            raw.setsockopt(socket.SOL_TCP, TCP_ULP, b"tls")
        except OSError as exc:
            raise KTLSUnavailable(f"setsockopt(TCP_ULP, 'tls') failed: {exc.strerror}") from None
    try:
        raw.setsockopt(SOL_TLS, TLS_RX, tls13_crypto_info(suite, bytes(secret)))
    except OSError as exc:
        # The ULP is on but RX was refused: reading through OpenSSL still works (nothing read).
        raise KTLSUnavailable(f"setsockopt(SOL_TLS, TLS_RX) failed: {exc.strerror}") from None
    cipher = CIPHER_NAMES[TLS13_SUITES[suite][0]]
    return KTLSInfo(version, suite, cipher, "tb", tx)


class KTLSTransport(Transport):
    """TLS whose receive side the kernel decrypts: `recv_into` is a raw `recvmsg_into`."""

    def __init__(self, ssock: ssl.SSLSocket, raw: socket.socket, info: KTLSInfo) -> None:
        super().__init__(raw, "ktls")
        self.ssock = ssock  # kept: owns the SSL object; sends go through it if TX is userspace
        self.raw = raw
        self.info = info
        self._hs_skip = 0  # bytes of a handshake message still to skip (split across reads)
        self._hs_head = bytearray()  # a handshake header split across reads
        self._ended: int | TransportError | None = None  # EOF or error held behind data
        self._sender = raw if info.tx == "kernel" else ssock

    def recv_into(self, view: memoryview) -> int | None:
        """Read plaintext into `view` until the socket is empty or `view` is full; 0 at EOF (or
        close_notify), None if nothing was ready. An error or the end that comes after some
        data is reported on the next call, so the data before it is never lost.

        Raises:
            TransportError: decryption or socket failure, a fatal alert, an unexpected record.
            KTLSRekeyError: the server sent a KeyUpdate (reconnect).
        """
        if self._ended is not None:
            if isinstance(self._ended, Exception):
                raise self._ended
            return 0
        recvmsg_into = self.raw.recvmsg_into
        got, size = 0, len(view)
        while got < size:
            try:
                n, anc, _flags, _ = recvmsg_into((view[got:],), _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                return self._end(got, TransportError(_recv_error(exc)))
            # The kernel tags every record with its type when given a control buffer; one
            # read never mixes types, so one check per read covers all n bytes. Reading on
            # until EAGAIN: one recvmsg stops at the records already complete, and bigger
            # reads mean bigger routing batches.
            if not anc or anc[0][2][0] == REC_DATA:
                if n == 0:
                    return self._end(got, 0)
                got += n
                continue
            rtype = anc[0][2][0]
            try:
                if rtype == REC_HANDSHAKE:
                    self._handshake(view[got : got + n])
                elif rtype == REC_ALERT:
                    if self._alert(bytes(view[got : got + n])):
                        return self._end(got, 0)
                else:
                    raise TransportError(f"unexpected TLS record type {rtype} from the server")
            except TransportError as exc:
                return self._end(got, exc)
        return got if got else None

    def _end(self, got: int, why: int | TransportError) -> int:
        """Return the data read so far; the end (0 or an error) comes now if there is none."""
        if got:
            self._ended = why
            return got
        if isinstance(why, Exception):
            raise why
        return 0

    def _handshake(self, data: memoryview) -> None:
        """Post-handshake messages: skip NewSessionTicket, stop at KeyUpdate, refuse the rest."""
        pos, n = 0, len(data)
        while pos < n:
            if self._hs_skip:
                take = min(self._hs_skip, n - pos)
                self._hs_skip -= take
                pos += take
                continue
            need = 4 - len(self._hs_head)
            self._hs_head += data[pos : pos + need]
            pos += min(need, n - pos)
            if len(self._hs_head) < 4:
                return
            mtype, length = self._hs_head[0], int.from_bytes(self._hs_head[1:4], "big")
            self._hs_head.clear()
            if mtype == HS_KEY_UPDATE:
                raise KTLSRekeyError(
                    "the server sent a TLS 1.3 KeyUpdate; kernel TLS RX (Linux 6.1) cannot "
                    "re-key, so tb reconnects (use --tls userspace to follow key updates)"
                )
            if mtype != HS_NEW_SESSION_TICKET:
                raise TransportError(
                    f"unexpected TLS handshake message {mtype} after the handshake"
                )
            self._hs_skip = length

    @staticmethod
    def _alert(data: bytes) -> bool:
        """True for close_notify (EOF); raise TransportError for any other alert."""
        if len(data) < 2:
            raise TransportError(f"malformed TLS alert record from the server: {data.hex()}")
        level, desc = data[0], data[1]
        if desc == 0:
            return True
        name = _ALERTS.get(desc, f"#{desc}")
        kind = "fatal" if level == 2 else "warning"
        raise TransportError(f"the server sent a TLS {kind} alert: {name} ({desc})")

    def send(self, data: bytes | memoryview) -> int:
        """Send what the socket takes now (kernel-encrypted or through OpenSSL); 0 if it would
        block."""
        try:
            return self._sender.send(data)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except (ssl.SSLError, OSError) as exc:
            raise TransportError(f"TLS send failed: {exc}") from None

    def close(self) -> None:
        for s in (self.raw, self.ssock):
            try:
                s.close()
            except OSError:
                pass


def _recv_error(exc: OSError) -> str:
    if exc.errno == errno.EBADMSG:
        return "kernel TLS: a record from the server failed to decrypt (EBADMSG)"
    if exc.errno == errno.EMSGSIZE:
        return "kernel TLS: the server sent an oversized record (EMSGSIZE)"
    return f"kernel TLS receive failed: {exc.strerror or exc}"

"""The kernel's transmit timestamps of one TCP socket's sends (for tb profile's latency).

Theory of operation: with SO_TIMESTAMPING (linux/net_tstamp.h: TX_SOFTWARE, SOFTWARE, OPT_ID,
OPT_TSONLY) the kernel takes a software timestamp of each send's last byte as it goes to the
device, and queues it on the socket's error queue keyed by that byte's offset in the stream
(counted from when timestamping was switched on, modulo 2**32). On loopback that is the moment
the bytes are handed to the client's socket. `collect()` drains the error queue into a dict,
converting CLOCK_REALTIME to CLOCK_MONOTONIC; `last_sent()` returns the stamp of the last byte
sent so far, if it has come. Switch it on before the first byte is sent; where the kernel or
the socket (TLS) gives none, `start` returns None and the caller keeps its own time.
"""

from __future__ import annotations

import socket
import struct
import time

__all__ = ["TxStamps"]

SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)
_TX_STAMP_FLAGS = (1 << 1) | (1 << 4) | (1 << 7) | (1 << 11)  # TX_SOFTWARE, SOFTWARE, ID, TSONLY
_SO_EE_ORIGIN_TIMESTAMPING = 4
_MAX_KEPT = 4096  # stamps nobody asked for (control bytes) are dropped past this many


class TxStamps:
    """Transmit timestamps of `sock`'s sends, keyed by the offset of each send's last byte."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0  # bytes sent since timestamping was switched on (the caller counts them)
        self.stamps: dict[int, int] = {}  # last byte's offset -> monotonic ns it was sent
        self.realtime_offset = time.clock_gettime_ns(time.CLOCK_REALTIME) - time.monotonic_ns()

    @classmethod
    def start(cls, sock: socket.socket) -> TxStamps | None:
        """Ask the kernel for transmit timestamps on `sock`; None if it will not give them."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, _TX_STAMP_FLAGS)
        except OSError:
            return None
        return cls(sock)

    def collect(self) -> None:
        """Move the timestamps waiting in the socket's error queue into `stamps`."""
        stamps = self.stamps
        while True:
            try:
                _, ancillary, _, _ = self.sock.recvmsg(
                    0, 256, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT
                )
            except OSError:  # (BlockingIOError: none left)
                return
            t = key = None
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and len(data) >= 16:
                    sec, nsec = struct.unpack_from("qq", data)
                    t = sec * 1_000_000_000 + nsec - self.realtime_offset
                elif len(data) >= 16 and data[4] == _SO_EE_ORIGIN_TIMESTAMPING:
                    key = struct.unpack_from("I", data, 12)[0]  # sock_extended_err.ee_data
            if t is not None and key is not None:
                if len(stamps) > _MAX_KEPT:
                    stamps.clear()
                stamps[key] = t

    def last_sent(self) -> int | None:
        """The monotonic ns the last byte sent so far left, if its stamp has come (taken once)."""
        self.collect()
        return self.stamps.pop((self.sent - 1) & 0xFFFFFFFF, None)

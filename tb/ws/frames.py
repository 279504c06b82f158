"""RFC 6455 frame codes and frame encoding.

Theory of operation: a frame is ``[FIN RSV1-3 opcode][MASK len7][len16|len64][mask key][payload]``.
This module owns the vocabulary (:class:`Opcode`, :class:`CloseCode`), the rules on close codes
(RFC 6455 section 7.4) and the *encoding* side: :func:`encode_frame` and :func:`encode_close`
build complete frames as bytes, masked with a fresh random key when asked (the client role must
mask, RFC 6455 section 5.3). Decoding lives in :mod:`tb.ws.connection`, whose scanner is tuned
for the receive path and works on memoryviews without copying.
"""

from __future__ import annotations

import enum
import os
import struct

__all__ = [
    "Opcode",
    "CloseCode",
    "encode_frame",
    "encode_close",
    "apply_mask",
    "is_valid_close_code",
]


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 section 5.2)."""

    CONT = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10


class CloseCode(enum.IntEnum):
    """Registered close status codes (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011


_OPCODES = frozenset(int(op) for op in Opcode)
_PACK16 = struct.Struct("!BBH").pack
_PACK64 = struct.Struct("!BBQ").pack


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire (RFC 6455 section 7.4).

    Invalid: below 1000, 1004-1006 (reserved / never sent), 1015 (TLS failure, never sent),
    1016-2999 (reserved for the protocol) and above 4999. 1012-1014 are registered by IANA.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def apply_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (masking and unmasking are the same).

    Works on the whole payload as one big integer: three linear C passes instead of a Python
    loop per byte (tests/ws/test_frames.py pins it against a byte-by-byte reference).
    """
    n = len(data)
    if n == 0:
        return b""
    repeated = key * ((n >> 2) + 1)
    return (int.from_bytes(data, "little") ^ int.from_bytes(repeated[:n], "little")).to_bytes(
        n, "little"
    )


def encode_frame(
    opcode: int, payload: bytes | bytearray | memoryview, *, mask: bool, fin: bool = True
) -> bytes:
    """Return one complete frame carrying ``payload``.

    ``mask=True`` (client role) draws a fresh 4-byte key from ``os.urandom`` for this frame.
    Raises ValueError for an unknown opcode, or a control frame (opcode >= 8) that is
    fragmented or longer than 125 bytes.
    """
    if opcode not in _OPCODES:
        raise ValueError(f"unknown opcode {opcode}")
    n = len(payload)
    if opcode >= 8 and (n > 125 or not fin):
        raise ValueError(f"control frame (opcode {opcode}) must be final and <= 125 bytes, got {n}")
    b0 = opcode | 0x80 if fin else opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        header = bytes((b0, mbit | n))
    elif n < 65536:
        header = _PACK16(b0, mbit | 126, n)
    else:
        header = _PACK64(b0, mbit | 127, n)
    if mask:
        key = os.urandom(4)
        return b"".join((header, key, apply_mask(payload, key)))
    return b"".join((header, payload))


def encode_close(code: int | None = 1000, reason: str = "", *, mask: bool) -> bytes:
    """Return a close frame with ``code`` and ``reason``; ``code=None`` sends an empty body.

    Raises ValueError if the code may not be sent (see :func:`is_valid_close_code`), or the
    reason is given without a code or is longer than 123 bytes in UTF-8.
    """
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        return encode_frame(Opcode.CLOSE, b"", mask=mask)
    if not is_valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 section 7.4)")
    body = reason.encode()
    if len(body) > 123:
        raise ValueError(f"close reason is {len(body)} bytes in UTF-8, the limit is 123")
    return encode_frame(Opcode.CLOSE, code.to_bytes(2, "big") + body, mask=mask)

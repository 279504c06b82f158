"""The websocket connection state machine, sans I/O (RFC 6455 sections 5-7).

Theory of operation: the caller owns the socket and a receive buffer. It hands the bytes it has
to :meth:`Connection.receive`, which parses every *complete* frame at the start of the buffer
and returns how many bytes it consumed; the caller keeps the unconsumed tail (a partial frame)
and calls again once more bytes are appended. Complete data messages are appended to
``Connection.messages``; replies (pong, close) and everything sent with ``send_*`` accumulate
in an outgoing buffer that :meth:`Connection.data_to_send` drains.

Invariants:
- A message that arrived as ONE unfragmented, unmasked frame is a memoryview slice of the
  buffer passed to ``receive`` (zero-copy): it is valid until the caller overwrites that part
  of its buffer, so take the messages before compacting. Reassembled fragments, and payloads
  unmasked in the server role, are ``bytes``.
- State goes OPEN -> CLOSING (we sent a close) -> CLOSED (the peer's close arrived), or
  OPEN -> CLOSED directly when the peer closes first (our reply is queued automatically).
- A protocol violation raises ProtocolError (or PayloadTooBig / InvalidPayload) after queuing a
  close frame with the matching code and setting state CLOSING, so the caller sends
  ``data_to_send()`` and drops the connection. The connection is then dead: ``receive`` raises.
"""

from __future__ import annotations

import enum
import logging
from codecs import utf_8_decode

from .errors import InvalidPayload, PayloadTooBig, ProtocolError, WebSocketError
from .frames import apply_mask, encode_close, encode_frame, is_valid_close_code

__all__ = ["State", "Connection"]

log = logging.getLogger("tb.ws")


class State(enum.Enum):
    """Where the closing handshake stands."""

    OPEN = enum.auto()
    CLOSING = enum.auto()
    CLOSED = enum.auto()


OPEN, CLOSING, CLOSED = State.OPEN, State.CLOSING, State.CLOSED


class Connection:
    """One websocket connection in the client (default) or server role.

    ``max_message`` bounds the size of a data message (fragments included); ``validate_utf8``
    checks text messages and close reasons (turn it off only for a trusted peer).
    """

    def __init__(
        self, *, client: bool = True, max_message: int = 16 << 20, validate_utf8: bool = True
    ) -> None:
        self.client = client
        self.max_message = max_message
        self.validate_utf8 = validate_utf8
        self.messages: list[memoryview | bytes] = []
        self.text_messages = 0
        self.binary_messages = 0
        self.pings = 0
        self.pongs = 0
        self.state = OPEN
        self.close_code: int | None = None
        self.close_reason = ""
        self.failure: ProtocolError | None = None  # the violation that killed the connection
        self._out = bytearray()
        self._close_sent = False
        self._frag_opcode = 0  # opcode of the fragmented message in progress, 0 if none
        self._frag = bytearray()

    @property
    def in_fragmented_message(self) -> bool:
        """A fragmented message is being reassembled (its CONT frames must go through receive)."""
        return bool(self._frag_opcode)

    # -- receiving -----------------------------------------------------------------------

    def receive(self, buf: memoryview) -> int:
        """Parse every complete frame at the start of ``buf``; return the bytes consumed.

        Raises ProtocolError (close code 1002), PayloadTooBig (1009) or InvalidPayload (1007)
        after queuing the matching close frame; see the module docstring.
        """
        if self.failure is not None:
            raise ProtocolError(f"receive() on a failed connection ({self.failure})")
        if type(buf) is not memoryview:
            buf = memoryview(buf)
        if buf.format != "B":
            buf = buf.cast("B")
        n = len(buf)
        if self.state is CLOSED and n:
            self._fail(ProtocolError, f"{n} bytes received after the close frame")
        append = self.messages.append
        check = self.validate_utf8
        limit = self.max_message
        fast_b1 = self._fast_b1()
        texts = binaries = 0
        pos = 0
        try:
            while pos + 2 <= n:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                # Fast path: a final unmasked TEXT (0x81) or BINARY (0x82) frame with a 7- or
                # 16-bit length, client role, no fragment in progress -- nearly every feed frame.
                # test_connection.py's every-byte-split tests pin it against the general path.
                if b1 <= fast_b1 and (b0 == 0x81 or b0 == 0x82):
                    if b1 == 126:
                        if pos + 4 > n:
                            break
                        start = pos + 4
                        end = start + ((buf[pos + 2] << 8) | buf[pos + 3])
                        if end - start > limit:
                            self._too_big(end - start)
                    else:  # 7-bit: _fast_b1() admits these only when max_message >= 125
                        start = pos + 2
                        end = start + b1
                    if end > n:
                        break
                    payload = buf[start:end]
                    if b0 == 0x81:
                        if check:
                            try:
                                utf_8_decode(payload, "strict", True)
                            except UnicodeDecodeError as exc:
                                self._fail(InvalidPayload, f"text message is not UTF-8: {exc}")
                        texts += 1
                    else:
                        binaries += 1
                    append(payload)
                    pos = end
                    continue
                end = self._frame(buf, pos, n, b0, b1)
                if end < 0:
                    break
                pos = end
                if self.state is CLOSED:
                    if pos < n:
                        self._fail(ProtocolError, f"{n - pos} bytes received after the close frame")
                    break
                fast_b1 = self._fast_b1()
        finally:
            self.text_messages += texts
            self.binary_messages += binaries
        return pos

    def _fast_b1(self) -> int:
        """The largest second header byte the fast path takes (0: none, use the general path).

        In the server role every valid frame is masked (b1 >= 0x80), so 0 keeps the server off
        the fast path; so does a fragmented message in progress, or a max_message below 125.
        """
        return 126 if self.client and not self._frag_opcode and self.max_message >= 125 else 0

    def _frame(self, buf: memoryview, pos: int, n: int, b0: int, b1: int) -> int:
        """Handle the general case: one frame at ``pos``. Return its end, or -1 if incomplete."""
        if b0 & 0x70:
            self._fail(ProtocolError, f"reserved bits set (0x{b0 & 0x70:02x}), no extension agreed")
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        length = b1 & 0x7F
        if (b1 & 0x80) != (0 if self.client else 0x80):
            if self.client:
                self._fail(ProtocolError, "masked frame from the server")
            self._fail(ProtocolError, "unmasked frame from the client")
        if opcode >= 8:
            if opcode > 10:
                self._fail(ProtocolError, f"unknown opcode {opcode}")
            if not fin:
                self._fail(ProtocolError, f"fragmented control frame (opcode {opcode})")
            if length > 125:
                self._fail(ProtocolError, f"control frame (opcode {opcode}) longer than 125 bytes")
        elif opcode > 2:
            self._fail(ProtocolError, f"unknown opcode {opcode}")
        elif opcode == 0:
            if not self._frag_opcode:
                self._fail(ProtocolError, "continuation frame with no message in progress")
        elif self._frag_opcode:
            self._fail(ProtocolError, "new data message while a fragmented one is in progress")
        start = pos + 2
        if length == 126:
            if n < start + 2:
                return -1
            length = (buf[start] << 8) | buf[start + 1]
            start += 2
        elif length == 127:
            if n < start + 8:
                return -1
            length = int.from_bytes(buf[start : start + 8], "big")
            if length >> 63:
                self._fail(ProtocolError, "64-bit frame length with the most significant bit set")
            start += 8
        if opcode < 8 and len(self._frag) + length > self.max_message:
            self._too_big(len(self._frag) + length)
        if not self.client:
            start += 4
        end = start + length
        if end > n:
            return -1
        if self.client:
            payload: memoryview | bytes = buf[start:end]
        else:
            payload = apply_mask(buf[start:end], bytes(buf[start - 4 : start]))
        if opcode == 0 or not fin:
            self._fragment(opcode, fin, payload)
        elif opcode <= 2:
            self._message(opcode, payload)
        elif opcode == 9:
            self.pings += 1
            if not self._close_sent:
                self._out += encode_frame(10, payload, mask=self.client)
        elif opcode == 10:
            self.pongs += 1
        else:
            self._close_frame(payload)
        return end

    def _fragment(self, opcode: int, fin: int, payload: memoryview | bytes) -> None:
        if opcode:
            self._frag_opcode = opcode
        self._frag += payload
        if fin:
            message = bytes(self._frag)
            opcode = self._frag_opcode
            self._frag_opcode = 0
            self._frag.clear()
            self._message(opcode, message)

    def _message(self, opcode: int, payload: memoryview | bytes) -> None:
        if opcode == 1:
            if self.validate_utf8:
                try:
                    utf_8_decode(payload, "strict", True)
                except UnicodeDecodeError as exc:
                    self._fail(InvalidPayload, f"text message is not UTF-8: {exc}")
            self.text_messages += 1
        else:
            self.binary_messages += 1
        self.messages.append(payload)

    def _close_frame(self, payload: memoryview | bytes) -> None:
        size = len(payload)
        if size == 1:
            self._fail(ProtocolError, "close frame with a 1-byte payload")
        if size == 0:
            code, reason = 1005, ""
        else:
            code = (payload[0] << 8) | payload[1]
            if not is_valid_close_code(code):
                self._fail(ProtocolError, f"invalid close code {code}")
            try:
                reason = utf_8_decode(payload[2:], "strict" if self.validate_utf8 else "replace")[0]
            except UnicodeDecodeError as exc:
                self._fail(InvalidPayload, f"close reason is not UTF-8: {exc}")
        self.close_code = code
        self.close_reason = reason
        if not self._close_sent:
            self._close_sent = True
            self._out += encode_close(None if code == 1005 else code, mask=self.client)
        self.state = CLOSED

    def _too_big(self, size: int) -> None:
        self._fail(PayloadTooBig, f"message of {size} bytes exceeds max_message {self.max_message}")

    def _fail(self, kind: type[ProtocolError], message: str) -> None:
        """Queue a close frame with ``kind``'s close code, log, and raise ``kind(message)``."""
        exc = kind(message)
        self.failure = exc
        log.warning("websocket %s: %s (close code %d)", type(exc).__name__, message, exc.close_code)
        if not self._close_sent:
            self._close_sent = True
            reason = message.encode()[:123].decode("utf-8", "ignore")
            self._out += encode_close(exc.close_code, reason, mask=self.client)
            self.state = CLOSING
        raise exc

    # -- sending -------------------------------------------------------------------------

    def _send(self, opcode: int, payload: bytes | bytearray | memoryview) -> None:
        if self._close_sent:
            raise WebSocketError(f"cannot send opcode {opcode}: the close frame was already sent")
        self._out += encode_frame(opcode, payload, mask=self.client)

    def send_text(self, payload: bytes | str) -> None:
        """Queue a text message (``str`` is encoded as UTF-8; ``bytes`` must already be UTF-8)."""
        self._send(1, payload.encode() if isinstance(payload, str) else payload)

    def send_binary(self, payload: bytes) -> None:
        """Queue a binary message."""
        self._send(2, payload)

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue a ping (payload at most 125 bytes)."""
        self._send(9, payload)

    def send_pong(self, payload: bytes = b"") -> None:
        """Queue an unsolicited pong (payload at most 125 bytes)."""
        self._send(10, payload)

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Start (or finish) the closing handshake; a no-op if our close frame was already sent.

        State becomes CLOSING, or stays CLOSED if the peer's close was already received.
        """
        if self._close_sent:
            return
        self._out += encode_close(code, reason, mask=self.client)
        self._close_sent = True
        if self.state is OPEN:
            self.state = CLOSING

    def data_to_send(self) -> bytes:
        """Return and clear the bytes queued for the peer."""
        data = bytes(self._out)
        self._out.clear()
        return data

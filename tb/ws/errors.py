"""Exceptions raised by tb.ws.

Theory of operation: one family rooted at :class:`WebSocketError`. Handshake problems are
:class:`InvalidHandshake` (carrying the HTTP status involved, if any); frame-level violations are
:class:`ProtocolError` and its subclasses, each carrying the close code the connection sends to
the peer before it is dropped. Every exception is raised at the one place that knows why.
"""

from __future__ import annotations

__all__ = [
    "WebSocketError",
    "InvalidHandshake",
    "ProtocolError",
    "PayloadTooBig",
    "InvalidPayload",
]


class WebSocketError(Exception):
    """Base class of every error raised by tb.ws."""


class InvalidHandshake(WebSocketError):
    """The opening handshake failed.

    ``status`` is the HTTP status involved: in the client role the status the server answered
    when it was not 101 (None when the 101 response itself was wrong); in the server role the
    status to reject the request with (400, or 426 for an unsupported version).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProtocolError(WebSocketError):
    """The peer broke RFC 6455; ``close_code`` is the code sent in our close frame."""

    default_close_code = 1002

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = self.default_close_code if close_code is None else close_code


class PayloadTooBig(ProtocolError):
    """A message (or a frame header announcing one) exceeds ``max_message``; close code 1009."""

    default_close_code = 1009


class InvalidPayload(ProtocolError):
    """A text message or close reason is not valid UTF-8; close code 1007."""

    default_close_code = 1007

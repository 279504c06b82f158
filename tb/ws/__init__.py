"""tb.ws: a sans-I/O RFC 6455 websocket core (client and server roles).

Theory of operation: :mod:`.handshake` builds and checks the HTTP upgrade, :mod:`.frames` owns
opcodes, close codes and frame encoding, :mod:`.connection` parses frames out of a memoryview
and queues replies. Nothing here touches a socket, a clock or a process; the transports feed
bytes in and send ``Connection.data_to_send()`` out.
"""

from __future__ import annotations

from .connection import Connection, State
from .errors import InvalidHandshake, InvalidPayload, PayloadTooBig, ProtocolError, WebSocketError
from .frames import CloseCode, Opcode, apply_mask, encode_close, encode_frame, is_valid_close_code
from .handshake import (
    Request,
    accept_key,
    client_request,
    parse_client_response,
    parse_server_request,
    reject_response,
    server_response,
)

__all__ = [
    "CloseCode",
    "Connection",
    "InvalidHandshake",
    "InvalidPayload",
    "Opcode",
    "PayloadTooBig",
    "ProtocolError",
    "Request",
    "State",
    "WebSocketError",
    "accept_key",
    "apply_mask",
    "client_request",
    "encode_close",
    "encode_frame",
    "is_valid_close_code",
    "parse_client_response",
    "parse_server_request",
    "reject_response",
    "server_response",
]

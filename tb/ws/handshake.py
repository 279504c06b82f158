"""The RFC 6455 opening handshake, both roles, without I/O.

Theory of operation: the client sends an HTTP/1.1 ``GET`` with ``Upgrade: websocket`` and a
random ``Sec-WebSocket-Key``; the server answers ``101 Switching Protocols`` with
``Sec-WebSocket-Accept = base64(sha1(key + GUID))``. Both parsers take whatever bytes have
arrived so far and return 0 until the header block (up to ``\\r\\n\\r\\n``) is complete, then the
number of header bytes they consumed: anything after that is already websocket frames and
belongs to :class:`tb.ws.Connection`. Header blocks over 16 KiB are refused. tb never offers
extensions (no permessage-deflate: the feed is parsed in place), so a server that answers with
any ``Sec-WebSocket-Extensions`` is refused; so is a subprotocol the client did not ask for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from .errors import InvalidHandshake

__all__ = [
    "MAX_HEADER_BYTES",
    "Request",
    "accept_key",
    "client_request",
    "parse_client_response",
    "parse_server_request",
    "server_response",
    "reject_response",
]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER_BYTES = 16 * 1024
_END = b"\r\n\r\n"


@dataclass(slots=True)
class Request:
    """A parsed upgrade request; header names are lower-cased, repeated headers joined by ", "."""

    method: str
    path: str
    headers: dict[str, str]


def accept_key(key: str) -> str:
    """Return the ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def _check_field(what: str, value: str) -> None:
    if "\r" in value or "\n" in value or not value.isascii():
        raise ValueError(f"{what} must be ASCII without CR/LF: {value!r}")


def client_request(
    host: str,
    path: str,
    *,
    key: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> tuple[bytes, str]:
    """Build the client's upgrade request.

    ``host`` goes into the Host header as given (include ``:port`` when it is not the scheme's
    default); ``path`` is the request target, already percent-encoded. ``key`` defaults to 16
    random bytes in base64. Returns ``(request bytes, key used)``. Raises ValueError for a field
    that is not ASCII or contains CR/LF (header injection).
    """
    if key is None:
        key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path or '/'} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    for name, value in headers:
        _check_field("header name", name)
        _check_field("header value", value)
        if not name or ":" in name or " " in name:
            raise ValueError(f"bad header name {name!r}")
        lines.append(f"{name}: {value}")
    for value in (host, path, key):
        _check_field("request field", value)
        if " " in value:
            raise ValueError(f"request field must not contain spaces: {value!r}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii"), key


def _split_head(buf: bytes | bytearray | memoryview) -> tuple[int, list[str]]:
    """Return (consumed, lines) of a complete header block, or (0, []) if it is incomplete."""
    head = bytes(buf[: MAX_HEADER_BYTES + len(_END)])
    end = head.find(_END)
    if end < 0:
        if len(head) > MAX_HEADER_BYTES:
            raise InvalidHandshake(f"header block exceeds {MAX_HEADER_BYTES} bytes", 400)
        return 0, []
    if end > MAX_HEADER_BYTES:
        raise InvalidHandshake(f"header block exceeds {MAX_HEADER_BYTES} bytes", 400)
    # Latin-1 maps every byte, so a stray non-ASCII byte is reported, not a decode traceback.
    return end + len(_END), head[:end].decode("latin-1").split("\r\n")


def _parse_headers(lines: list[str], status: int | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise InvalidHandshake(f"malformed header line {line[:80]!r}", status)
        name = name.lower()
        value = value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in value.split(",")} if value else set()


def _check_upgrade(headers: dict[str, str], status: int | None) -> None:
    if "websocket" not in _tokens(headers.get("upgrade")):
        raise InvalidHandshake(
            f"Upgrade header is {headers.get('upgrade')!r}, not websocket", status
        )
    if "upgrade" not in _tokens(headers.get("connection")):
        raise InvalidHandshake(
            f"Connection header is {headers.get('connection')!r}, not Upgrade", status
        )


def parse_client_response(
    buf: bytes | bytearray | memoryview, key: str, *, protocols: Collection[str] = ()
) -> int:
    """Check the server's answer to :func:`client_request` (client role).

    Returns 0 while the header block is incomplete, else the number of header bytes consumed
    (bytes after them are websocket frames). ``protocols`` are the subprotocols the client
    offered, if it added a Sec-WebSocket-Protocol header. Raises InvalidHandshake when the status
    is not 101 (``.status`` set), Upgrade/Connection are wrong, the accept key does not match,
    the server picked an extension or an unoffered subprotocol, or the block exceeds 16 KiB.
    """
    consumed, lines = _split_head(buf)
    if not consumed:
        return 0
    version, _, rest = lines[0].partition(" ")
    code, _, phrase = rest.partition(" ")
    if version != "HTTP/1.1" or not (
        len(code) == 3 and code.isascii() and code.isdigit() and code[0] != "0"
    ):
        raise InvalidHandshake(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    status = int(code)
    if status != 101:
        raise InvalidHandshake(f"server answered {status} {phrase[:80]} instead of 101", status)
    headers = _parse_headers(lines[1:], None)
    _check_upgrade(headers, None)
    got = headers.get("sec-websocket-accept")
    if got != accept_key(key):
        raise InvalidHandshake(f"Sec-WebSocket-Accept {got!r} does not match the key sent")
    if "sec-websocket-extensions" in headers:
        raise InvalidHandshake(
            f"server chose extensions {headers['sec-websocket-extensions']!r}, none were offered"
        )
    chosen = headers.get("sec-websocket-protocol")
    if chosen is not None and chosen not in protocols:
        raise InvalidHandshake(f"server chose subprotocol {chosen!r}, which was not offered")
    return consumed


def parse_server_request(buf: bytes | bytearray | memoryview) -> tuple[int, Request | None]:
    """Parse a client's upgrade request (server role).

    Returns ``(0, None)`` while incomplete, else ``(consumed, request)``. Raises InvalidHandshake
    with ``.status`` = the status to reject with: 400 for a malformed or non-upgrade request,
    426 for a Sec-WebSocket-Version other than 13 (see :func:`reject_response`).
    """
    consumed, lines = _split_head(buf)
    if not consumed:
        return 0, None
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1":
        raise InvalidHandshake(f"not an HTTP/1.1 request line: {lines[0][:80]!r}", 400)
    method, path, _ = parts
    if method != "GET":
        raise InvalidHandshake(f"method {method[:20]!r} instead of GET", 400)
    headers = _parse_headers(lines[1:], 400)
    if "host" not in headers:
        raise InvalidHandshake("request has no Host header", 400)
    _check_upgrade(headers, 400)
    if headers.get("sec-websocket-version") != "13":
        raise InvalidHandshake(
            f"Sec-WebSocket-Version {headers.get('sec-websocket-version')!r}, only 13 is spoken",
            426,
        )
    key = headers.get("sec-websocket-key", "")
    try:
        raw = base64.b64decode(key, validate=True) if key.isascii() else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise InvalidHandshake(f"Sec-WebSocket-Key {key[:40]!r} is not 16 bytes in base64", 400)
    return consumed, Request(method, path, headers)


def server_response(request: Request) -> bytes:
    """Return the 101 response accepting ``request`` (no extension, no subprotocol)."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(request.headers['sec-websocket-key'])}\r\n\r\n"
    ).encode("ascii")


def reject_response(status: int, reason: str) -> bytes:
    """Return a plain-text HTTP/1.1 error response; 426 also names the supported version."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = (reason + "\n").encode()
    extra = "Sec-WebSocket-Version: 13\r\n" if status == 426 else ""
    return (
        f"HTTP/1.1 {status} {phrase}\r\n{extra}"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii") + body

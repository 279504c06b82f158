"""Opening handshake, client and server roles."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tb.ws import (
    InvalidHandshake,
    accept_key,
    client_request,
    parse_client_response,
    parse_server_request,
    reject_response,
    server_response,
)
from tb.ws.handshake import MAX_HEADER_BYTES

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def response(
    status: str = "101 Switching Protocols", *extra: str, accept: str | None = None
) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Upgrade: websocket", "Connection: Upgrade"]
    lines.append(f"Sec-WebSocket-Accept: {accept_key(KEY) if accept is None else accept}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_accept_key_rfc_example() -> None:
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_client_request_shape() -> None:
    req, key = client_request("socket.example:8443", "/stocks", headers=[("User-Agent", "tb")])
    assert len(base64.b64decode(key)) == 16
    text = req.decode()
    assert text.startswith("GET /stocks HTTP/1.1\r\n")
    assert text.endswith("\r\n\r\n")
    assert "Host: socket.example:8443\r\n" in text
    assert f"Sec-WebSocket-Key: {key}\r\n" in text
    assert "Sec-WebSocket-Version: 13\r\n" in text
    assert "User-Agent: tb\r\n" in text
    assert "Extensions" not in text
    assert client_request("h", "/", key=KEY)[1] == KEY
    assert client_request("h", "/")[1] != client_request("h", "/")[1]
    with pytest.raises(ValueError):
        client_request("h", "/", headers=[("X-Evil", "a\r\nInjected: 1")])
    with pytest.raises(ValueError):
        client_request("h", "/a b")


def test_client_request_is_accepted_by_server_parser() -> None:
    req, key = client_request("localhost", "/x?y=1")
    consumed, request = parse_server_request(req)
    assert consumed == len(req)
    assert request is not None
    assert (request.method, request.path) == ("GET", "/x?y=1")
    assert request.headers["sec-websocket-key"] == key
    answer = server_response(request)
    assert parse_client_response(answer, key) == len(answer)


def test_response_incomplete_then_complete_leaves_frames() -> None:
    resp = response()
    frames = b"\x81\x05hello"
    stream = resp + frames
    for cut in range(len(resp)):
        assert parse_client_response(stream[:cut], KEY) == 0
    assert parse_client_response(stream, KEY) == len(resp)
    assert parse_client_response(memoryview(bytearray(stream)), KEY) == len(resp)


@pytest.mark.parametrize(
    ("raw", "status", "match"),
    [
        (response(accept="AAAAAAAAAAAAAAAAAAAAAAAAAAA="), None, "Accept"),
        (response("401 Unauthorized"), 401, "401 Unauthorized"),
        (response("200 OK"), 200, "200"),
        (
            response("101 Switching Protocols", "Sec-WebSocket-Extensions: permessage-deflate"),
            None,
            "extensions",
        ),
        (response("101 Switching Protocols", "Sec-WebSocket-Protocol: chat"), None, "subprotocol"),
        (response().replace(b"Upgrade: websocket", b"Upgrade: h2c"), None, "Upgrade"),
        (response().replace(b"Connection: Upgrade", b"Connection: keep-alive"), None, "Connection"),
        (response().replace(b"Sec-WebSocket-Accept", b"X-Accept"), None, "Accept"),
        (b"HTTP/1.0 101 Switching Protocols\r\n\r\n", None, "status line"),
        (b"garbage\r\n\r\n", None, "status line"),
        (response().replace(b"Connection: Upgrade", b"Connection Upgrade"), None, "malformed"),
    ],
)
def test_bad_responses(raw: bytes, status: int | None, match: str) -> None:
    with pytest.raises(InvalidHandshake, match=match) as info:
        parse_client_response(raw, KEY)
    assert info.value.status == status


def test_offered_subprotocol_is_accepted() -> None:
    raw = response("101 Switching Protocols", "Sec-WebSocket-Protocol: chat")
    assert parse_client_response(raw, KEY, protocols=["chat"]) == len(raw)


def test_connection_header_token_list() -> None:
    raw = response().replace(b"Connection: Upgrade", b"connection: keep-alive, UPGRADE")
    assert parse_client_response(raw, KEY) == len(raw)


def test_header_block_limit() -> None:
    huge = b"HTTP/1.1 101 Switching Protocols\r\nX-Pad: " + b"a" * MAX_HEADER_BYTES
    with pytest.raises(InvalidHandshake, match="exceeds"):
        parse_client_response(huge, KEY)
    with pytest.raises(InvalidHandshake, match="exceeds"):
        parse_client_response(huge + b"\r\n\r\n", KEY)
    with pytest.raises(InvalidHandshake, match="exceeds"):
        parse_server_request(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * MAX_HEADER_BYTES)


def request(*drop: str, **replace: str) -> bytes:
    headers = {
        "Host": "localhost",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    headers.update(replace)
    lines = ["GET /feed HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items() if k not in drop]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_server_request_ok_and_incomplete() -> None:
    raw = request()
    assert parse_server_request(raw[:-1]) == (0, None)
    consumed, req = parse_server_request(raw + b"\x81\x85....")
    assert consumed == len(raw)
    assert req is not None and req.headers["host"] == "localhost"
    assert f"Sec-WebSocket-Accept: {accept_key(KEY)}".encode() in server_response(req)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (request("Host"), 400),
        (request("Upgrade"), 400),
        (request(Connection="close"), 400),
        (request(**{"Sec-WebSocket-Version": "8"}), 426),
        (request("Sec-WebSocket-Version"), 426),
        (request(**{"Sec-WebSocket-Key": "c2hvcnQ="}), 400),
        (request(**{"Sec-WebSocket-Key": "!!!"}), 400),
        (request().replace(b"GET", b"POST"), 400),
        (request().replace(b"HTTP/1.1", b"HTTP/1.0"), 400),
    ],
)
def test_bad_requests(raw: bytes, status: int) -> None:
    with pytest.raises(InvalidHandshake) as info:
        parse_server_request(raw)
    assert info.value.status == status


def test_reject_response() -> None:
    raw = reject_response(426, "only version 13")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"Sec-WebSocket-Version: 13" in head
    assert body == b"only version 13\n"
    assert f"Content-Length: {len(body)}".encode() in head
    assert reject_response(400, "bad").startswith(b"HTTP/1.1 400 Bad Request\r\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([b"", b"\r\n\r\n"]))
def test_garbage_handshakes_raise_only_invalid_handshake(junk: bytes, end: bytes) -> None:
    for parse in (lambda b: parse_client_response(b, KEY), parse_server_request):
        try:
            parse(junk + end)
        except InvalidHandshake:
            pass

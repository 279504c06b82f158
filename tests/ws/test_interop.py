"""tb.ws against the websockets library over real loopback sockets, in both roles.

websockets is used here only as an independent peer. Every socket has a timeout and every
thread is joined with one, so a hang fails the test instead of blocking the run.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

websockets_sync_server = pytest.importorskip("websockets.sync.server")
websockets_sync_client = pytest.importorskip("websockets.sync.client")

from tb.ws import (  # noqa: E402
    Connection,
    PayloadTooBig,
    State,
    client_request,
    parse_client_response,
    parse_server_request,
    server_response,
)

TIMEOUT = 5.0
BIG = bytes(range(256)) * 400  # 102400 bytes: a 64-bit length on the wire
FRAGMENTS = ["frag-one ", "fr\u00e9g-two ", "frag-three"]


def pump(sock: socket.socket, conn: Connection, buf: bytearray, on_message) -> None:
    """Read until the peer's close arrives, handing each message to ``on_message``."""
    arena = bytearray(1 << 16)
    while conn.state is not State.CLOSED:
        if buf:
            used = conn.receive(memoryview(buf))
            messages = [bytes(m) for m in conn.messages]  # copy: the views pin buf
            conn.messages.clear()
            for message in messages:
                on_message(conn, message)
            del buf[:used]
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
            if conn.state is State.CLOSED:
                break
        n = sock.recv_into(arena)
        assert n, "peer closed TCP before the websocket close"
        buf += arena[:n]


@pytest.fixture
def websockets_server() -> Iterator[tuple[int, dict]]:
    seen: dict = {"errors": [], "done": threading.Event()}

    def handler(ws) -> None:
        try:
            ws.send(iter(FRAGMENTS))  # an iterable is sent as one fragmented message
            seen["pong"] = ws.ping(b"are you there").wait(TIMEOUT)
            ws.send(BIG)
            seen["echo"] = ws.recv(timeout=TIMEOUT)
            ws.send(seen["echo"])  # echo the text tb sent, as text
            ws.close(1000, "done here")
            seen["close"] = (ws.close_code, ws.close_reason)
        except Exception as exc:  # reported by the test, not lost in the server thread
            seen["errors"].append(repr(exc))
        finally:
            seen["done"].set()

    server = websockets_sync_server.serve(
        handler, "127.0.0.1", 0, ping_interval=None, open_timeout=TIMEOUT, close_timeout=TIMEOUT
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()[1], seen
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def test_tb_client_against_websockets_server(websockets_server) -> None:
    port, seen = websockets_server
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        request, key = client_request(f"127.0.0.1:{port}", "/stocks")
        sock.sendall(request)
        buf = bytearray()
        while not (consumed := parse_client_response(buf, key)):
            chunk = sock.recv(4096)
            assert chunk, "server closed during the handshake"
            buf += chunk
        del buf[:consumed]  # whatever followed the headers is already frames

        conn = Connection(client=True)
        got: list[bytes] = []

        def on_message(conn: Connection, message: bytes) -> None:
            got.append(message)
            if len(got) == 2:  # after the big message, say something to be echoed
                conn.send_text("hello from tb \u2713")

        pump(sock, conn, buf, on_message)
        sock.sendall(conn.data_to_send())  # nothing after the close echo
        assert sock.recv(1) == b""  # the server ends TCP after the closing handshake

    assert seen["done"].wait(TIMEOUT)
    assert seen["errors"] == []
    assert got == ["".join(FRAGMENTS).encode(), BIG, "hello from tb \u2713".encode()]
    assert (conn.text_messages, conn.binary_messages, conn.pings) == (2, 1, 1)
    assert seen["pong"] is True
    assert seen["echo"] == "hello from tb \u2713"
    assert (conn.close_code, conn.close_reason) == (1000, "done here")
    assert seen["close"] == (1000, "")  # what websockets received: our echo, code only


def test_tb_server_against_websockets_client() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]
    result: dict = {}

    def serve_one() -> None:
        try:
            sock, _ = listener.accept()
            with sock:
                sock.settimeout(TIMEOUT)
                buf = bytearray()
                while True:
                    consumed, request = parse_server_request(buf)
                    if consumed:
                        break
                    buf += sock.recv(4096)
                result["request"] = request
                del buf[:consumed]
                sock.sendall(server_response(request))
                conn = Connection(client=False)
                got: list[bytes] = []

                def echo(conn: Connection, message: bytes) -> None:
                    got.append(message)
                    conn.send_binary(message)

                pump(sock, conn, buf, echo)
                result.update(conn=conn, got=got)
        except Exception as exc:
            result["error"] = repr(exc)

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        with websockets_sync_client.connect(
            f"ws://127.0.0.1:{port}/feed",
            proxy=None,
            ping_interval=None,
            open_timeout=TIMEOUT,
            close_timeout=TIMEOUT,
        ) as ws:  # it offers permessage-deflate; tb declines by not answering the offer
            ws.send(iter(FRAGMENTS))
            assert ws.recv(timeout=TIMEOUT) == "".join(FRAGMENTS).encode()
            assert ws.ping(b"tb?").wait(TIMEOUT)
            ws.send(BIG)
            assert ws.recv(timeout=TIMEOUT) == BIG
            ws.close(1001, "client leaving")
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    finally:
        listener.close()

    assert "error" not in result, result.get("error")
    conn = result["conn"]
    assert result["request"].path == "/feed"
    assert result["got"] == ["".join(FRAGMENTS).encode(), BIG]
    assert (conn.text_messages, conn.binary_messages, conn.pings) == (1, 1, 1)
    assert (conn.close_code, conn.close_reason, conn.state) == (
        1001,
        "client leaving",
        State.CLOSED,
    )


def test_tb_client_refuses_oversized_message_with_1009(websockets_server) -> None:
    port, seen = websockets_server
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        request, key = client_request(f"127.0.0.1:{port}", "/")
        sock.sendall(request)
        buf = bytearray()
        while not (consumed := parse_client_response(buf, key)):
            buf += sock.recv(4096)
        del buf[:consumed]
        conn = Connection(client=True, max_message=len(BIG) - 1)
        with pytest.raises(PayloadTooBig):
            pump(sock, conn, buf, lambda conn, message: None)
        assert conn.state is State.CLOSING
        sock.sendall(conn.data_to_send())  # the 1009 close, then drop the connection
    assert seen["done"].wait(TIMEOUT)
    assert seen["pong"] is True
    assert seen["errors"] and "1009" in seen["errors"][0]

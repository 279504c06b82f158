"""FeedClient, the per-connection protocol state, against tb.ws's server role: bytes in, bytes out."""

from __future__ import annotations

import json

import pytest

from tb.feed import AuthFailed, FeedError
from tb.feed.client import FeedClient
from tb.ws import Connection, InvalidHandshake, parse_server_request, server_response


def connected_pair(key: str = "secret"):
    """A client whose upgrade the server side accepted; (client, server Connection)."""
    client = FeedClient("127.0.0.1:1", "/stocks", key, "--key", "T.AAPL,T.MSFT")
    request = client.data_to_send()
    assert request.startswith(b"GET /stocks HTTP/1.1\r\n")
    n, req = parse_server_request(request)
    assert n == len(request)
    response = server_response(req)
    # the upgrade is taken in two pieces, and frames may follow it in the same receive
    assert client.upgrade(response[:10]) == 0 and not client.upgraded
    assert client.phase == "websocket upgrade"
    assert client.upgrade(response + b"\x81\x02[]") == len(response)
    assert client.upgraded and client.phase == "greeting"
    return client, Connection(client=False)


def sent_texts(client: FeedClient, server: Connection) -> list[dict]:
    server.receive(memoryview(client.data_to_send()))
    out = [json.loads(bytes(m)) for m in server.messages]
    server.messages.clear()
    return out


def test_the_session_runs_through_the_websocket_to_streaming():
    client, server = connected_pair()
    assert not client.on_statuses([{"ev": "status", "status": "connected", "message": "hi"}])
    assert sent_texts(client, server) == [{"action": "auth", "params": "secret"}]
    assert not client.on_statuses([{"ev": "status", "status": "auth_success"}])
    assert sent_texts(client, server) == [{"action": "subscribe", "params": "T.AAPL,T.MSFT"}]
    assert not client.on_statuses([{"ev": "status", "status": "success", "message": "T.AAPL"}])
    assert client.on_statuses([{"ev": "status", "status": "success", "message": "T.MSFT"}])
    assert client.streaming and client.phase == "streaming"
    assert client.data_to_send() == b""  # nothing more to say


def test_a_refused_key_is_fatal_and_names_its_source_not_the_key():
    client, _ = connected_pair("hunter2")
    client.on_statuses([{"ev": "status", "status": "connected"}])
    with pytest.raises(AuthFailed) as err:
        client.on_statuses([{"ev": "status", "status": "auth_failed", "message": "bad"}])
    assert "--key" in str(err.value) and "hunter2" not in str(err.value)


def test_auth_timeout_is_a_feed_error_and_disconnect_reasons_are_kept():
    client, _ = connected_pair()
    client.on_statuses([{"ev": "status", "status": "connected"}])
    client.on_statuses([{"ev": "status", "status": "max_connections"}])
    assert client.disconnect_reason == "max_connections"
    with pytest.raises(FeedError):
        client.on_statuses([{"ev": "status", "status": "auth_timeout"}])


def test_a_bad_upgrade_answer_raises():
    client = FeedClient("127.0.0.1:1", "/", "k", "--key")
    with pytest.raises(InvalidHandshake):
        client.upgrade(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

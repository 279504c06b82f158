import json

import pytest

from tb.feed import AuthFailed, FeedError, Phase, Session


def test_full_handshake_sends_auth_then_subscribe():
    s = Session("SECRET", "--key", "T.AAPL,T.MSFT")
    assert s.phase is Phase.GREETING and s.outgoing == []
    s.on_status({"ev": "status", "status": "connected", "message": "Connected Successfully"})
    assert json.loads(s.outgoing.pop()) == {"action": "auth", "params": "SECRET"}
    s.on_status({"ev": "status", "status": "auth_success", "message": "authenticated"})
    assert json.loads(s.outgoing.pop()) == {"action": "subscribe", "params": "T.AAPL,T.MSFT"}
    assert s.phase is Phase.SUBSCRIBING
    s.on_status({"ev": "status", "status": "success", "message": "subscribed to: T.AAPL"})
    assert s.phase is Phase.SUBSCRIBING
    s.on_status({"ev": "status", "status": "success", "message": "subscribed to: T.MSFT"})
    assert s.phase is Phase.STREAMING and s.streaming


def test_auth_failed_names_key_source_and_hides_key():
    s = Session("SECRET", "POLYGON_API_KEY")
    s.on_status({"status": "connected"})
    with pytest.raises(AuthFailed) as info:
        s.on_status({"status": "auth_failed", "message": "authentication failed"})
    assert "POLYGON_API_KEY" in str(info.value)
    assert "SECRET" not in str(info.value) and "SECRET" not in repr(s)


def test_auth_timeout_is_a_feed_error_not_auth_failure():
    s = Session("k", "--key")
    s.on_status({"status": "connected"})
    with pytest.raises(FeedError) as info:
        s.on_status({"status": "auth_timeout"})
    assert not isinstance(info.value, AuthFailed)


@pytest.mark.parametrize("reason", ["max_connections", "force_disconnect", "slow_consumer"])
def test_disconnect_reasons_are_remembered(reason, caplog):
    s = Session("k", "--key")
    s.on_status({"status": "connected"})
    s.on_status({"status": reason, "message": "bye"})
    assert s.disconnect_reason == reason
    assert reason in caplog.text


def test_unexpected_status_is_ignored_not_fatal():
    s = Session("k", "--key")
    s.on_status({"status": "auth_success"})  # before the greeting: ignored
    assert s.phase is Phase.GREETING and s.outgoing == []
    s.on_status({"status": "something_new"})
    assert s.statuses == 2

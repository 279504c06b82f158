"""tb.replay.protocol: the feed protocol's server side, sans I/O, event by event."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tb.replay.protocol import (
    TRANSITIONS,
    Event,
    IllegalTransition,
    Phase,
    SendClose,
    SendText,
    ServerSession,
    StartStream,
)


def statuses(replies) -> list[tuple[str, str]]:
    """(status, message) of every text reply, in order."""
    out = []
    for reply in replies:
        if isinstance(reply, SendText):
            (event,) = json.loads(reply.payload)
            assert event["ev"] == "status"
            out.append((event["status"], event["message"]))
    return out


def closes(replies) -> list[tuple[int, str]]:
    return [(r.code, r.reason) for r in replies if isinstance(r, SendClose)]


def action(name: str, params=None, **extra) -> bytes:
    value = {"action": name, **extra}
    if params is not None:
        value["params"] = params
    return json.dumps(value).encode()  # (spaces after ':' and ',', as the official client)


def session_in(phase: Phase, **kw) -> ServerSession:
    """A session driven to `phase` the way a client gets there."""
    s = ServerSession(peer="127.0.0.1:5", **kw)
    if phase is Phase.HANDSHAKE:
        return s
    s.upgraded("/stocks")
    if phase is Phase.AUTH:
        return s
    s.receive(action("auth", kw.get("key") or "k"))
    if phase is Phase.SUBSCRIBE:
        return s
    s.receive(action("subscribe", "T.*"))
    if phase is Phase.STREAMING:
        return s
    if phase is Phase.IDLE:
        s.stream_sent()
        return s
    s.receive(b"not json")
    assert s.phase is Phase.CLOSING
    return s


def test_upgrade_greets_and_waits_for_auth():
    s = ServerSession()
    replies = s.upgraded("/stocks")
    assert statuses(replies) == [("connected", "Connected Successfully")] and not closes(replies)
    assert s.phase is Phase.AUTH


def test_over_the_limit_the_upgrade_is_refused_with_a_status_and_1008():
    s = ServerSession()
    replies = s.refuse(1)
    assert statuses(replies)[0][0] == "max_connections"
    assert closes(replies) == [(1008, "max connections")] and s.phase is Phase.CLOSING


def test_any_key_is_accepted_when_none_is_set():
    s = session_in(Phase.AUTH)
    replies = s.receive(action("auth", "whatever"))
    assert statuses(replies) == [("auth_success", "authenticated")] and not closes(replies)
    assert s.phase is Phase.SUBSCRIBE


def test_the_right_key_is_accepted():
    s = session_in(Phase.AUTH, key="right")
    assert statuses(s.receive(action("auth", "right")))[0][0] == "auth_success"


def test_a_bad_key_gets_auth_failed_then_close_1008_and_the_key_is_never_logged(caplog):
    caplog.set_level(logging.INFO, logger="tb.replay")
    s = session_in(Phase.AUTH, key="sekrit-right")
    replies = s.receive(action("auth", "sekrit-wrong"))
    assert statuses(replies) == [("auth_failed", "authentication failed")]
    assert closes(replies) == [(1008, "authentication failed")]
    assert replies[-1] == SendClose(1008, "authentication failed")  # the status goes first
    assert s.phase is Phase.CLOSING
    assert "auth failed (wrong key)" in caplog.text and "127.0.0.1:5" in caplog.text
    assert "sekrit" not in caplog.text and "sekrit" not in repr(s)


@pytest.mark.parametrize("params", [None, 42, ["k"]])
def test_an_auth_without_a_string_key_fails_when_a_key_is_set(params):
    s = session_in(Phase.AUTH, key="k")
    assert closes(s.receive(action("auth", params))) == [(1008, "authentication failed")]


def test_auth_timeout_sends_the_status_then_closes_1008():
    s = session_in(Phase.AUTH)
    replies = s.auth_timed_out()
    assert statuses(replies) == [("auth_timeout", "no valid auth received")]
    assert closes(replies) == [(1008, "auth timeout")] and s.phase is Phase.CLOSING


@pytest.mark.parametrize("phase", [Phase.HANDSHAKE, Phase.SUBSCRIBE, Phase.STREAMING])
def test_auth_timeout_outside_the_auth_phase_is_illegal_and_names_the_phase(phase):
    s = session_in(phase)
    with pytest.raises(IllegalTransition, match=f"'auth timeout' .* phase '{phase.value}'"):
        s.auth_timed_out()
    assert s.phase is phase  # unchanged


@pytest.mark.parametrize("verb", ["subscribe", "unsubscribe"])
def test_subscribe_or_unsubscribe_before_auth_closes_1008(verb, caplog):
    caplog.set_level(logging.WARNING, logger="tb.replay")
    s = session_in(Phase.AUTH)
    replies = s.receive(action(verb, "T.*"))
    assert replies == [SendClose(1008, "bad message")] and s.phase is Phase.CLOSING
    assert f"{verb} before auth; closing with 1008" in caplog.text


def test_subscribe_acks_each_topic_then_starts_the_stream():
    s = session_in(Phase.SUBSCRIBE)
    replies = s.receive(action("subscribe", "T.*, T.AAPL,,"))
    assert statuses(replies) == [
        ("success", "subscribed to: T.*"),
        ("success", "subscribed to: T.AAPL"),
    ]
    assert replies[-1] == StartStream("T.*, T.AAPL,,")
    assert s.phase is Phase.STREAMING and s.streamed


def test_unsubscribe_before_any_subscribe_is_acked_and_streams_nothing():
    s = session_in(Phase.SUBSCRIBE)
    replies = s.receive(action("unsubscribe", "T.MSFT"))
    assert statuses(replies) == [("success", "unsubscribed from: T.MSFT")]
    assert s.phase is Phase.SUBSCRIBE and not s.streamed


@pytest.mark.parametrize("phase", [Phase.STREAMING, Phase.IDLE])
def test_later_subscribes_are_acked_without_a_second_stream(phase):
    s = session_in(phase)
    replies = s.receive(action("subscribe", "T.MSFT"))
    assert statuses(replies) == [("success", "subscribed to: T.MSFT")]
    assert not any(isinstance(r, StartStream) for r in replies) and s.phase is phase
    assert statuses(s.receive(action("unsubscribe", "T.MSFT"))) == [
        ("success", "unsubscribed from: T.MSFT")
    ]


@pytest.mark.parametrize("phase", [Phase.SUBSCRIBE, Phase.STREAMING, Phase.IDLE])
def test_a_second_auth_is_answered_already_authenticated(phase):
    s = session_in(phase, key="k")
    replies = s.receive(action("auth", "anything"))
    assert statuses(replies) == [("success", "already authenticated")] and s.phase is phase


@pytest.mark.parametrize(
    "message,why",
    [
        (b"hello", "message is not JSON"),
        (b'["auth"]', "message has no action"),
        (b'{"params": "k"}', "message has no action"),
        (b'{"action": 7}', "message has no action"),
        (b'{"action": "dance"}', "unknown action 'dance'"),
        (b'{"action": "subscribe"}', 'subscribe needs params like "T.*", got None'),
        (b'{"action": "subscribe", "params": ",,"}', "subscribe needs params"),
        (b'{"action": "unsubscribe", "params": ["T.*"]}', "unsubscribe needs params"),
    ],
)
def test_bad_messages_close_1008_with_the_reason_logged(message, why, caplog):
    caplog.set_level(logging.WARNING, logger="tb.replay")
    s = session_in(Phase.SUBSCRIBE)
    assert s.receive(message) == [SendClose(1008, "bad message")]
    assert s.phase is Phase.CLOSING and not s.streamed
    assert why in caplog.text


def test_the_end_of_the_stream_leaves_the_connection_open_or_closes_1000():
    s = session_in(Phase.STREAMING)
    assert s.stream_sent() == [] and s.phase is Phase.IDLE
    s = session_in(Phase.STREAMING, close_after=True)
    assert s.stream_sent() == [SendClose(1000, "replay finished")] and s.phase is Phase.CLOSING


@pytest.mark.parametrize("phase", [Phase.AUTH, Phase.SUBSCRIBE, Phase.STREAMING, Phase.IDLE])
def test_a_closing_websocket_moves_every_open_phase_to_closing(phase):
    s = session_in(phase)
    s.closing()
    assert s.phase is Phase.CLOSING
    s.closing()  # (a websocket error while closing)
    assert s.phase is Phase.CLOSING


def test_illegal_events_raise_naming_the_phase_and_change_nothing():
    s = ServerSession()
    with pytest.raises(IllegalTransition, match="'close' is not allowed in phase 'handshake'"):
        s.closing()
    with pytest.raises(IllegalTransition, match="phase 'handshake'"):
        s.receive(action("auth", "k"))
    with pytest.raises(
        IllegalTransition, match="'stream sent' is not allowed in phase 'handshake'"
    ):
        s.stream_sent()
    assert s.phase is Phase.HANDSHAKE
    s = session_in(Phase.CLOSING)
    with pytest.raises(IllegalTransition, match="phase 'closing'"):
        s.receive(action("auth", "k"))
    with pytest.raises(IllegalTransition, match="'upgrade' is not allowed in phase 'closing'"):
        s.upgraded("/")
    s = session_in(Phase.IDLE)
    with pytest.raises(IllegalTransition, match="'stream sent' is not allowed in phase 'idle'"):
        s.stream_sent()


def test_the_table_covers_every_phase_and_nothing_leaves_closing():
    assert set(TRANSITIONS) == set(Phase)
    assert set(TRANSITIONS[Phase.CLOSING].values()) == {Phase.CLOSING}
    reachable = {Phase.HANDSHAKE}
    for _ in Phase:
        reachable |= {nxt for p in reachable for nxt in TRANSITIONS[p].values()}
    assert reachable == set(Phase)
    assert all(nxt is Phase.CLOSING for p in Phase for e, nxt in TRANSITIONS[p].items()
               if e in (Event.BAD_MESSAGE, Event.CLOSE))  # fmt: skip


@given(st.lists(st.one_of(
    st.binary(max_size=40),
    st.sampled_from([action("auth", "k"), action("auth", "x"), action("subscribe", "T.*"),
                     action("unsubscribe", "T.A"), action("subscribe", ""), b"{}"]),
), max_size=12), st.sampled_from([None, "k"]))  # fmt: skip
def test_any_client_input_gets_replies_never_an_exception(messages, key):
    """Whatever a client sends, the session answers (the handler stops at CLOSING), and it only
    streams after a successful auth and a subscribe."""
    s = session_in(Phase.AUTH, key=key)
    authed = False
    for message in messages:
        if s.phase is Phase.CLOSING:
            break
        before = s.phase
        replies = s.receive(message)
        authed |= before is Phase.AUTH and s.phase is Phase.SUBSCRIBE
        if any(isinstance(r, StartStream) for r in replies):
            assert authed and before is Phase.SUBSCRIBE and s.phase is Phase.STREAMING
        if closes(replies):
            assert s.phase is Phase.CLOSING and replies[-1] == SendClose(*closes(replies)[0])

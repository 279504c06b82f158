"""The server side of the feed protocol, sans I/O: what `tb replay` answers, and when it streams.

Theory of operation: one `ServerSession` per client connection, driven by the connection's
handler with what happened (the websocket upgrade, each text message, the auth deadline, the end
of the stream) and answering with `Reply` values for the handler to carry out, in order: a text
message to send, a close frame to send, or the stream to start. It never touches a socket, a
thread or a clock; it logs one line per decision, naming the peer. The phases:

    HANDSHAKE --upgrade--> AUTH          (greeting: status "connected")
    HANDSHAKE --refuse--> CLOSING        (over --max-connections: "max_connections", close 1008)
    AUTH --auth ok--> SUBSCRIBE          ("auth_success"; any key when none is set)
    AUTH --auth failed|auth timeout--> CLOSING   ("auth_failed"/"auth_timeout", close 1008)
    SUBSCRIBE --subscribe--> STREAMING   (one "success" per topic, then the stream starts)
    STREAMING --stream sent--> IDLE      (the connection stays open until the client leaves)
    IDLE --finish--> CLOSING             (at once with --close-after: close 1000)
    AUTH|SUBSCRIBE|STREAMING|IDLE --bad message|close--> CLOSING
    CLOSING --close--> CLOSING           (a websocket error while closing)

A bad message (not JSON, no action, an unknown action, subscribe or unsubscribe before auth,
subscribe without topics) closes with 1008 "bad message". Every SendClose comes with the move to
CLOSING, after which the handler passes on no more messages. A second auth is answered "already
authenticated"; a subscribe or unsubscribe after the first one is acknowledged topic by topic
and changes nothing else. The transitions are the table `TRANSITIONS`; an event the table does
not have for the current phase raises `IllegalTransition` naming both: the handler never asks
for one, so it is a bug, not a client's mistake.
"""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass

__all__ = [
    "Phase",
    "Event",
    "TRANSITIONS",
    "IllegalTransition",
    "Reply",
    "SendText",
    "SendClose",
    "StartStream",
    "ServerSession",
    "GREETING",
    "AUTH_SUCCESS",
    "AUTH_FAILED",
    "AUTH_TIMEOUT",
    "MAX_CONNECTIONS",
    "status_message",
]

log = logging.getLogger("tb.replay")

AUTH_TIMEOUT_S = 30.0  # from the connection's start until auth (the handler keeps the clock)

GREETING = b'[{"ev":"status","status":"connected","message":"Connected Successfully"}]'
AUTH_SUCCESS = b'[{"ev":"status","status":"auth_success","message":"authenticated"}]'
AUTH_FAILED = b'[{"ev":"status","status":"auth_failed","message":"authentication failed"}]'
AUTH_TIMEOUT = b'[{"ev":"status","status":"auth_timeout","message":"no valid auth received"}]'
MAX_CONNECTIONS = (
    b'[{"ev":"status","status":"max_connections","message":'
    b'"Maximum number of websocket connections exceeded."}]'
)


def status_message(status: str, message: str) -> bytes:
    """One status event as the feed sends it: `[{"ev":"status","status":..,"message":..}]`."""
    return json.dumps(
        [{"ev": "status", "status": status, "message": message}], separators=(",", ":")
    ).encode()


class Phase(enum.Enum):
    HANDSHAKE = "handshake"  # waiting for the websocket upgrade
    AUTH = "auth"  # greeted; waiting for {"action":"auth"}
    SUBSCRIBE = "subscribe"  # authenticated; waiting for {"action":"subscribe"}
    STREAMING = "streaming"  # the capture is being sent
    IDLE = "idle"  # all of it was sent; pings and closes are still answered
    CLOSING = "closing"  # a close frame went out or came in: nothing more is read


class Event(enum.Enum):
    UPGRADE = "upgrade"
    REFUSE = "refuse"
    AUTH_OK = "auth ok"
    AUTH_FAILED = "auth failed"
    AUTH_TIMEOUT = "auth timeout"
    SUBSCRIBE = "subscribe"
    STREAM_SENT = "stream sent"
    FINISH = "finish"  # close_after: close once the stream was sent
    BAD_MESSAGE = "bad message"
    CLOSE = "close"  # the websocket is closing: the peer's close frame, or a websocket error


_OPEN_PHASES = (Phase.AUTH, Phase.SUBSCRIBE, Phase.STREAMING, Phase.IDLE)

#: phase -> {event: next phase}; anything else is an IllegalTransition.
TRANSITIONS: dict[Phase, dict[Event, Phase]] = {
    Phase.HANDSHAKE: {Event.UPGRADE: Phase.AUTH, Event.REFUSE: Phase.CLOSING},
    Phase.AUTH: {
        Event.AUTH_OK: Phase.SUBSCRIBE,
        Event.AUTH_FAILED: Phase.CLOSING,
        Event.AUTH_TIMEOUT: Phase.CLOSING,
    },
    Phase.SUBSCRIBE: {Event.SUBSCRIBE: Phase.STREAMING},
    Phase.STREAMING: {Event.STREAM_SENT: Phase.IDLE},
    Phase.IDLE: {Event.FINISH: Phase.CLOSING},
    Phase.CLOSING: {Event.CLOSE: Phase.CLOSING},  # (a websocket error while closing)
}
for _phase in _OPEN_PHASES:
    TRANSITIONS[_phase].update({Event.BAD_MESSAGE: Phase.CLOSING, Event.CLOSE: Phase.CLOSING})


class IllegalTransition(Exception):
    """An event that the current phase does not allow (a bug in the caller)."""

    def __init__(self, event: Event, phase: Phase) -> None:
        super().__init__(f"event {event.value!r} is not allowed in phase {phase.value!r}")
        self.event = event
        self.phase = phase


@dataclass(slots=True, frozen=True)
class SendText:
    payload: bytes


@dataclass(slots=True, frozen=True)
class SendClose:
    code: int
    reason: str


@dataclass(slots=True, frozen=True)
class StartStream:
    topics: str  # the first subscribe's params, as the client sent them


Reply = SendText | SendClose | StartStream


class ServerSession:
    """The feed protocol's server side for one connection.

    Args:
        key: the API key a client must send; None accepts any key.
        close_after: close with 1000 "replay finished" once the stream was sent.
        peer: the client's address, for the log lines.
    """

    def __init__(self, key: str | None = None, *, close_after: bool = False, peer: str = "?"):
        self.key = key
        self.close_after = close_after
        self.peer = peer
        self.phase = Phase.HANDSHAKE
        self.streamed = False  # the stream was started (it may not have been sent in full)

    def __repr__(self) -> str:  # never shows the key
        return f"<ServerSession {self.peer} {self.phase.value}>"

    def _go(self, event: Event) -> None:
        try:
            self.phase = TRANSITIONS[self.phase][event]
        except KeyError:
            raise IllegalTransition(event, self.phase) from None

    # -- what happened ------------------------------------------------------------------------
    def upgraded(self, path: str) -> list[Reply]:
        """The websocket upgrade (GET `path`) was answered: greet."""
        self._go(Event.UPGRADE)
        log.info("%s: connected (GET %s)", self.peer, path)
        return [SendText(GREETING)]

    def refuse(self, limit: int) -> list[Reply]:
        """The upgrade was answered but `limit` connections are already open: refuse."""
        self._go(Event.REFUSE)
        log.warning("%s: refused: already %d connections", self.peer, limit)
        return [SendText(MAX_CONNECTIONS), SendClose(1008, "max connections")]

    def auth_timed_out(self) -> list[Reply]:
        """The client has not authenticated in time (AUTH_TIMEOUT_S from its connection)."""
        self._go(Event.AUTH_TIMEOUT)
        log.warning("%s: no auth message in %.0f s; closing", self.peer, AUTH_TIMEOUT_S)
        return [SendText(AUTH_TIMEOUT), SendClose(1008, "auth timeout")]

    def stream_sent(self) -> list[Reply]:
        """The whole stream (every repeat) went to the client."""
        self._go(Event.STREAM_SENT)
        if not self.close_after:
            return []
        self._go(Event.FINISH)
        return [SendClose(1000, "replay finished")]

    def closing(self) -> None:
        """The websocket is closing underneath: the peer's close frame, or a websocket error."""
        self._go(Event.CLOSE)

    def receive(self, message: bytes) -> list[Reply]:
        """One text message from the client (a JSON action)."""
        if self.phase not in _OPEN_PHASES:
            raise IllegalTransition(Event.BAD_MESSAGE, self.phase)
        try:
            value = json.loads(message)
        except ValueError:
            return self._reject(f"message is not JSON: {message[:80]!r}")
        if not isinstance(value, dict) or not isinstance(value.get("action"), str):
            return self._reject(f"message has no action: {message[:80]!r}")
        action, params = value["action"], value.get("params")
        if action == "auth":
            return self._auth(params)
        if action in ("subscribe", "unsubscribe"):
            return self._subscribe(action, params)
        return self._reject(f"unknown action {action[:40]!r}")

    # -- the actions ----------------------------------------------------------------------------
    def _auth(self, params: object) -> list[Reply]:
        if self.phase is not Phase.AUTH:
            return [SendText(status_message("success", "already authenticated"))]
        if self.key is not None and params != self.key:
            self._go(Event.AUTH_FAILED)
            log.warning("%s: auth failed (wrong key)", self.peer)
            return [SendText(AUTH_FAILED), SendClose(1008, "authentication failed")]
        self._go(Event.AUTH_OK)
        return [SendText(AUTH_SUCCESS)]

    def _subscribe(self, action: str, params: object) -> list[Reply]:
        if self.phase is Phase.AUTH:
            return self._reject(f"{action} before auth")
        if not isinstance(params, str) or not params.strip(","):
            return self._reject(f'{action} needs params like "T.*", got {params!r:.60}')
        verb = "subscribed to" if action == "subscribe" else "unsubscribed from"
        replies: list[Reply] = [
            SendText(status_message("success", f"{verb}: {topic.strip()}"))
            for topic in params.split(",")
            if topic.strip()
        ]
        if action == "subscribe" and self.phase is Phase.SUBSCRIBE:
            self._go(Event.SUBSCRIBE)
            self.streamed = True
            replies.append(StartStream(params))
        return replies

    def _reject(self, why: str) -> list[Reply]:
        self._go(Event.BAD_MESSAGE)
        log.warning("%s: %s; closing with 1008", self.peer, why)
        return [SendClose(1008, "bad message")]

"""The Polygon / Massive feed session, sans I/O.

Theory of operation: after the websocket upgrade the server speaks first. The session is a small
state machine driven by the server's status objects, which the router pulls out of every message
(status objects are the balancer's business and never reach a pipe):

    GREETING      --connected-->     AUTHENTICATING   (we send {"action":"auth","params":KEY})
    AUTHENTICATING --auth_success--> SUBSCRIBING      (we send {"action":"subscribe","params":...})
    AUTHENTICATING --auth_failed-->  raise AuthFailed (fatal: a wrong key does not fix itself)
    SUBSCRIBING   --success (each topic)--> STREAMING once every topic is acknowledged

Data events are routed in every phase: a server that starts streaming before the last `success`
loses nothing. Disconnect reasons (`max_connections`, `force_disconnect`, `slow_consumer`) are
remembered in `disconnect_reason` so the connection policy can back off accordingly. The session
never touches a socket or a clock: it takes status dicts and queues outgoing text messages.
"""

from __future__ import annotations

import enum
import json
import logging

__all__ = ["FeedError", "AuthFailed", "Phase", "Session", "DISCONNECT_REASONS"]

log = logging.getLogger("tb.feed")

#: statuses after which the server drops the connection; the reconnect policy looks at these
DISCONNECT_REASONS = frozenset({"max_connections", "force_disconnect", "slow_consumer"})


class FeedError(Exception):
    """The feed session cannot go on."""


class AuthFailed(FeedError):
    """The server refused the key (not retried: exit code 3)."""


class Phase(enum.Enum):
    GREETING = "greeting"
    AUTHENTICATING = "authenticating"
    SUBSCRIBING = "subscribing"
    STREAMING = "streaming"


# (phase, status) -> handler name. Anything not in the table is logged and ignored.
_TRANSITIONS = {
    (Phase.GREETING, "connected"): "_on_connected",
    (Phase.AUTHENTICATING, "auth_success"): "_on_auth_success",
    (Phase.AUTHENTICATING, "auth_failed"): "_on_auth_failed",
    (Phase.AUTHENTICATING, "auth_timeout"): "_on_auth_timeout",
    (Phase.SUBSCRIBING, "success"): "_on_subscribed",
    (Phase.STREAMING, "success"): "_on_subscribed",
}


class Session:
    """One connection's feed session.

    Args:
        key: the API key (never logged).
        key_source: where the key came from ("--key", "POLYGON_API_KEY", ...), named in errors.
        subscribe: comma-separated topics, e.g. "T.*" or "T.AAPL,T.MSFT".
    """

    def __init__(self, key: str, key_source: str, subscribe: str = "T.*") -> None:
        self._key = key
        self.key_source = key_source
        self.topics = [t.strip() for t in subscribe.split(",") if t.strip()]
        self.phase = Phase.GREETING
        self.outgoing: list[bytes] = []
        self.acked = 0
        self.disconnect_reason: str | None = None
        self.statuses = 0

    def __repr__(self) -> str:  # never shows the key
        return f"<Session {self.phase.value} topics={','.join(self.topics)}>"

    @property
    def streaming(self) -> bool:
        return self.phase is Phase.STREAMING

    def on_status(self, status: dict) -> None:
        """Take one status object from the server; may queue messages in `outgoing`.

        Raises:
            AuthFailed: the server refused the key.
            FeedError: the server gave up on authentication (auth_timeout).
        """
        self.statuses += 1
        name = str(status.get("status", ""))
        message = str(status.get("message", ""))
        handler = _TRANSITIONS.get((self.phase, name))
        if name in DISCONNECT_REASONS:
            self.disconnect_reason = name
            log.warning("server status %s: %s", name, message or "(no message)")
        elif handler is None:
            level = logging.WARNING if name in ("error", "auth_failed") else logging.INFO
            log.log(level, "server status %s in phase %s: %s", name, self.phase.value, message)
        if handler is not None:
            getattr(self, handler)(message)

    # -- transitions ----------------------------------------------------------------------------
    def _on_connected(self, message: str) -> None:
        log.info("connected: %s", message or "greeting received")
        self.outgoing.append(_action("auth", self._key))
        self.phase = Phase.AUTHENTICATING

    def _on_auth_success(self, message: str) -> None:
        log.info("authenticated (key from %s)", self.key_source)
        self.outgoing.append(_action("subscribe", ",".join(self.topics)))
        self.phase = Phase.SUBSCRIBING

    def _on_auth_failed(self, message: str) -> None:
        raise AuthFailed(
            f"authentication failed: the server refused the key from {self.key_source}"
            + (f" ({message})" if message else "")
        )

    def _on_auth_timeout(self, message: str) -> None:
        raise FeedError(f"the server timed out the authentication: {message or 'auth_timeout'}")

    def _on_subscribed(self, message: str) -> None:
        self.acked += 1
        log.info("subscribed: %s", message)
        if self.acked >= len(self.topics) and self.phase is Phase.SUBSCRIBING:
            self.phase = Phase.STREAMING


def _action(action: str, params: str) -> bytes:
    return json.dumps({"action": action, "params": params}, separators=(",", ":")).encode()

"""One connection to the feed, sans I/O: the websocket upgrade, the websocket, the feed session.

Theory of operation. A FeedClient is made per connection. It has bytes to send from the start
(the HTTP upgrade request); the caller reads the socket into its own buffer and hands the client
what arrived: first the upgrade response (`upgrade`), then websocket frames (`ws.receive`, or
the caller's own fast frame scan for plain data frames). Data messages are the caller's to route;
the status objects the router pulls out of them come back through `on_statuses`, which drives
the Session (greeting -> auth -> subscribe -> streaming) and queues its answers as masked text
frames. Whatever the client wants sent is in `data_to_send()`. `tb run` and `tb record` both
speak to the feed through this class; neither touches the protocol otherwise.

Errors: InvalidHandshake (the upgrade failed), ProtocolError (a bad frame: the websocket queues
its close), AuthFailed (a wrong key: fatal), FeedError (the session cannot go on: reconnect).
"""

from __future__ import annotations

from tb.feed import Session
from tb.ws import Connection, State, client_request, parse_client_response

__all__ = ["FeedClient"]


class FeedClient:
    """The protocol state of one feed connection (see the module docstring)."""

    def __init__(
        self,
        host_header: str,
        path: str,
        key: str,
        key_source: str,
        subscribe: str = "T.*",
        *,
        max_message: int = 16 << 20,
    ) -> None:
        request, self._ws_key = client_request(host_header, path)
        self._out = bytearray(request)
        self.ws = Connection(client=True, max_message=max_message)
        self.session = Session(key, key_source, subscribe)
        self.upgraded = False

    @property
    def streaming(self) -> bool:
        return self.session.streaming

    @property
    def phase(self) -> str:
        """Where the connection stands, for messages: "websocket upgrade", "authenticating"..."""
        return self.session.phase.value if self.upgraded else "websocket upgrade"

    @property
    def disconnect_reason(self) -> str | None:
        """The disconnect status the server sent (max_connections, slow_consumer...), if any."""
        return self.session.disconnect_reason

    def upgrade(self, data) -> int:
        """Take the server's answer to the upgrade from the start of `data`: the bytes it took
        (frames may follow them), or 0 while it is incomplete. Raises InvalidHandshake."""
        n = parse_client_response(data, self._ws_key)
        if n:
            self.upgraded = True
        return n

    def on_statuses(self, statuses: list[dict]) -> bool:
        """Drive the session with the server's status objects; True if streaming began with
        them. Raises AuthFailed or FeedError (see tb.feed.Session.on_status)."""
        session = self.session
        was_streaming = session.streaming
        try:
            for status in statuses:
                session.on_status(status)
        finally:
            if session.outgoing:
                if self.ws.state is State.OPEN:
                    for message in session.outgoing:
                        self.ws.send_text(message)
                session.outgoing.clear()
        return session.streaming and not was_streaming

    def data_to_send(self) -> bytes:
        """Everything queued for the server (the upgrade request, answers, pongs, a close)."""
        out = self._out + self.ws.data_to_send()
        self._out.clear()
        return bytes(out)

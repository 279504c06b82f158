"""When to reconnect, when to ping, when to give a silent peer up: small pure policies.

Neither policy reads a clock or sleeps: the caller passes `now` (any monotonic seconds) and acts
on the answer, which is what lets tests walk them through hours in microseconds.

Backoff: the delay before the next connection attempt doubles from `least` up to `most`; a
connection that reached streaming starts the doubling over. A server that said to go away
(max_connections, force_disconnect, slow_consumer) is given at least `asked_to_go` seconds.
Every delay is jittered to 50-150% so that many clients do not come back in step.

Keepalive: a ping every `ping_interval` seconds while connected, and a connection on which
nothing at all has arrived for `idle_timeout` seconds is dead (0 turns either off). Silence that
tb chose (the socket paused for backpressure) is not the peer's: the caller does not ask then.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from tb.feed import DISCONNECT_REASONS

__all__ = ["Backoff", "Keepalive", "KeepaliveAction"]


@dataclass(slots=True)
class Backoff:
    least: float = 0.25
    most: float = 30.0
    asked_to_go: float = 5.0
    current: float = field(init=False)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self.current = self.least

    def next_delay(self, *, was_streaming: bool, reason: str | None) -> float:
        """The delay before the next attempt, after a connection ended (jittered)."""
        if was_streaming:
            self.current = self.least
        delay = self.current
        if reason in DISCONNECT_REASONS:
            delay = max(delay, self.asked_to_go)  # the server asked us to go away: do not hammer
        self.current = min(self.most, self.current * 2)
        return delay * (0.5 + self.rng.random())


class KeepaliveAction(enum.Enum):
    NOTHING = "nothing"
    PING = "ping"
    DEAD = "dead"


@dataclass(slots=True)
class Keepalive:
    ping_interval: float = 20.0
    idle_timeout: float = 60.0
    last_ping: float = 0.0

    def start(self, now: float) -> None:
        """A new connection: it counts as pinged just now."""
        self.last_ping = now

    def check(self, now: float, last_rx: float) -> KeepaliveAction:
        """What to do at `now`, when bytes last arrived at `last_rx` (the receive path stamps
        that itself: one store per receive). Call about once a second; a PING counts as sent."""
        if self.idle_timeout and now - last_rx > self.idle_timeout:
            return KeepaliveAction.DEAD
        if self.ping_interval and now - self.last_ping >= self.ping_interval:
            self.last_ping = now
            return KeepaliveAction.PING
        return KeepaliveAction.NOTHING

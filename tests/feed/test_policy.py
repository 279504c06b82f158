"""The reconnect and keepalive policies, walked through time without a clock."""

from __future__ import annotations

import random

from tb.feed.policy import Backoff, Keepalive, KeepaliveAction


def bounds(delays: list[float], base: list[float]) -> bool:
    return all(0.5 * b <= d < 1.5 * b for d, b in zip(delays, base, strict=True))


def test_backoff_doubles_to_its_cap_and_starts_over_after_streaming():
    b = Backoff(0.25, 2.0, rng=random.Random(1))
    delays = [b.next_delay(was_streaming=False, reason=None) for _ in range(6)]
    assert bounds(delays, [0.25, 0.5, 1.0, 2.0, 2.0, 2.0])
    assert bounds([b.next_delay(was_streaming=True, reason=None)], [0.25])


def test_a_server_that_asks_tb_to_go_gets_at_least_asked_to_go():
    b = Backoff(0.25, 30.0, asked_to_go=5.0, rng=random.Random(2))
    for reason in ("max_connections", "force_disconnect", "slow_consumer"):
        assert b.next_delay(was_streaming=True, reason=reason) >= 2.5
    assert b.next_delay(was_streaming=True, reason="something else") < 0.375


def test_jitter_spreads_clients():
    delays = {Backoff(1.0, 1.0, rng=random.Random(s)).next_delay(was_streaming=False, reason=None)
              for s in range(20)}  # fmt: skip
    assert len(delays) == 20 and min(delays) >= 0.5 and max(delays) < 1.5


def test_keepalive_pings_on_time_and_declares_a_silent_peer_dead():
    k = Keepalive(ping_interval=20, idle_timeout=60)
    k.start(1000.0)
    rx = 1000.0
    assert k.check(1019.0, rx) is KeepaliveAction.NOTHING
    assert k.check(1020.0, rx) is KeepaliveAction.PING
    assert k.check(1021.0, rx) is KeepaliveAction.NOTHING  # (the ping counted as sent)
    assert k.check(1040.0, rx) is KeepaliveAction.PING
    assert k.check(1060.5, 1010.0) is KeepaliveAction.PING  # heard from 50.5 s ago: alive
    assert k.check(1060.5, rx) is KeepaliveAction.DEAD


def test_zero_turns_either_off():
    k = Keepalive(ping_interval=0, idle_timeout=0)
    k.start(0.0)
    assert k.check(1e9, 0.0) is KeepaliveAction.NOTHING

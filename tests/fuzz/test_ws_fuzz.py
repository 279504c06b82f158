"""tb.ws.Connection under fuzzing: valid streams split anywhere, mutated streams, raw bytes.

tests/ws/test_connection.py already feeds random bytes whole and valid streams at random
splits; here the outcome of *every* split (messages, counters, state, close code, the error and
the frames queued in reply) must equal the unsplit outcome, for valid and broken streams alike.
"""

from __future__ import annotations

from fuzz_targets import feed_connection, ws
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stream_strategies import mutated, streams, two_piece_or_random_splits

FAST = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(st.booleans(), st.data())
def test_valid_streams_give_their_messages_at_every_split(client, data):
    stream, messages = data.draw(streams(client))
    whole = feed_connection(stream, [], client=client, max_message=1 << 20)
    assert whole[0] == messages and whole[5] is None  # every message, no error
    plans = data.draw(two_piece_or_random_splits(len(stream)))
    ws(bytes((0 if client else 1, 0)) + stream, plans)


@FAST
@given(st.booleans(), st.integers(0, 15), st.data())
def test_mutated_streams_same_outcome_at_every_split(client, flags, data):
    stream, _ = data.draw(streams(client))
    broken = data.draw(mutated(stream))
    flags = (flags & ~1) | (0 if client else 1)
    ws(bytes((flags, 0)) + broken, data.draw(two_piece_or_random_splits(len(broken))))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_raw_bytes(data):
    ws(data)

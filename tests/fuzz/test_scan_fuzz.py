"""scan_data_frames + Connection.receive, as the balancer combines them, at every split.

tests/ws/test_scan.py checks whole feeds of plain frames; here the streams also hold control
frames, fragments, non-minimal lengths, binary payloads full of 0x81/0x82 and UTF-8 text, are
cut into pieces as recv() would deliver them, and are mutated.
"""

from __future__ import annotations

from fuzz_targets import feed_connection, scan
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stream_strategies import mutated, streams, two_piece_or_random_splits

FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(st.integers(0, 7), st.data())
def test_feed_streams_split_anywhere(flags, data):
    stream, messages = data.draw(streams(client=True, feed=True))
    if flags & 3 == 0:  # the default limit: every message comes through
        assert feed_connection(stream, [], client=True, max_message=1 << 20)[0] == messages
    scan(bytes((flags, 0)) + stream, data.draw(two_piece_or_random_splits(len(stream))))


@FAST
@given(st.integers(0, 7), st.data())
def test_mutated_feed_streams(flags, data):
    stream, _ = data.draw(streams(client=True, feed=True))
    broken = data.draw(mutated(stream))
    scan(bytes((flags, 0)) + broken, data.draw(two_piece_or_random_splits(len(broken))))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_raw_bytes(data):
    scan(data)

"""Bugs the fuzzers found in tb, fixed, and kept here as regression tests.

The same inputs are in tests/corpus/ (named bug-*). A newly found bug is pinned here as a
strict xfail (and listed in fuzz_targets.KNOWN_BUGS) until it is fixed.
"""

from __future__ import annotations

import numpy as np
import pytest

from tb.route.spans import SPAN_PAD, route_spans
from tb.ws import InvalidHandshake, parse_client_response, parse_server_request

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def test_server_request_with_a_non_ascii_key_is_an_invalid_handshake():
    raw = (
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: \xe9\r\n\r\n"
    )
    with pytest.raises(InvalidHandshake) as info:
        parse_server_request(raw)
    assert info.value.status == 400


def test_status_code_of_unicode_digits_is_an_invalid_handshake():
    with pytest.raises(InvalidHandshake):
        parse_client_response(b"HTTP/1.1 1\xb31 Switching Protocols\r\n\r\n", KEY)


def test_route_spans_on_a_batch_of_empty_payloads_does_not_raise():
    # one zero-length TEXT frame (0x81 0x00): scan_data_frames yields the span (2, 2)
    arena = np.frombuffer(bytearray(b"\x81\x00") + bytes(SPAN_PAD), np.uint8)
    starts, ends = np.array([2], np.int64), np.array([2], np.int64)
    assert route_spans(arena, starts, ends, 4) is None  # not feed-shaped: the general way

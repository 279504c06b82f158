"""Session.on_status on arbitrary dicts, in every phase: only FeedError/AuthFailed come out,
the phase only moves forward, auth then subscribe are sent once each, the key is never logged."""

from __future__ import annotations

import json

from fuzz_targets import run_session, session
from hypothesis import given, settings
from hypothesis import strategies as st

NAMES = ["connected", "auth_success", "auth_failed", "auth_timeout", "success", "error"]
NAMES += ["max_connections", "force_disconnect", "slow_consumer", "", "Connected", "success "]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
STATUS = st.fixed_dictionaries(
    {},
    optional={
        "ev": st.sampled_from(["status", "T", None]),
        "status": st.sampled_from(NAMES) | JSON,
        "message": st.text(max_size=20) | JSON,
    },
) | st.dictionaries(st.text(max_size=8), JSON, max_size=4)
# mostly the real sequence, so later phases are reached, with odd statuses in between
HAPPY = [{"status": n} for n in ("connected", "auth_success", "success", "success")]


@settings(max_examples=60, deadline=None)
@given(st.lists(STATUS, max_size=6), st.lists(st.integers(0, 6), max_size=6), st.booleans())
def test_arbitrary_statuses_in_every_phase(odd, where, two_topics):
    statuses = list(HAPPY)
    for obj, at in zip(odd, where, strict=False):
        statuses.insert(at, obj)
    statuses += odd[len(where) :]
    run_session(statuses, "T.AAPL,T.MSFT" if two_topics else "T.*")


@settings(max_examples=50, deadline=None)
@given(st.lists(STATUS | JSON, max_size=8), st.integers(0, 3))
def test_lines_as_the_server_sends_them(values, flags):
    lines = b"\n".join(json.dumps(v).encode() for v in values)
    session(bytes((flags,)) + lines)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 3))
def test_raw_bytes(data, flags):
    session(bytes((flags,)) + data)

"""The handshake parsers under fuzzing: well-formed upgrades with odd spelling, mutations, raw
bytes. Outcomes: only InvalidHandshake, 0 until the header block is complete, then the same
result for every longer prefix, and a parsed request round-trips through server_response."""

from __future__ import annotations

from fuzz_targets import handshake
from hypothesis import given, settings
from hypothesis import strategies as st
from stream_strategies import mutated

from tb.ws import accept_key, client_request

SPELLING = st.sampled_from(["Upgrade", "upgrade", "UPGRADE", "keep-alive, Upgrade", " Upgrade "])
HEADER = st.tuples(
    st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
        min_size=1,
        max_size=12,
    ),
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=20),
)


def response(key: str, upgrade: str, extra: list[tuple[str, str]], status: str = "101") -> bytes:
    lines = [
        f"HTTP/1.1 {status} Switching Protocols",
        "Upgrade: websocket",
        f"Connection: {upgrade}",
    ]
    lines += [f"Sec-WebSocket-Accept: {accept_key(key)}"] + [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@settings(max_examples=60, deadline=None)
@given(SPELLING, st.lists(HEADER, max_size=3), st.booleans(), st.data())
def test_client_role(upgrade, extra, mutate, data):
    raw = response("dGhlIHNhbXBsZSBub25jZQ==", upgrade, extra)
    if mutate:
        raw = data.draw(mutated(raw))
    handshake(b"\x00" + raw + b"\x81\x00")


@settings(max_examples=60, deadline=None)
@given(
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20),
    st.lists(HEADER, max_size=3),
    st.booleans(),
    st.data(),
)
def test_server_role(path, extra, mutate, data):
    try:
        raw, _key = client_request("example.com:443", "/" + path, headers=extra)
    except ValueError:  # client_request refuses fields with CR/LF or non-ASCII: documented
        raw, _key = client_request("example.com:443", "/" + path)
    if mutate:
        raw = data.draw(mutated(raw))
    handshake(b"\x01" + raw)


@settings(max_examples=120, deadline=None)
@given(st.sampled_from([b"\x00", b"\x01", b"\x02"]), st.binary(max_size=200))
def test_raw_bytes(role, junk):
    handshake(role + junk + b"\r\n\r\n")
    handshake(role + junk)

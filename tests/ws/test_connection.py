"""Connection.receive at every byte split, protocol violations, the closing handshake."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tb.ws import (
    Connection,
    InvalidPayload,
    PayloadTooBig,
    ProtocolError,
    State,
    WebSocketError,
    encode_close,
    encode_frame,
)


def feed(conn: Connection, chunks: Iterable[bytes]) -> tuple[list[bytes], bytes]:
    """Feed ``chunks`` like a real caller: append to one buffer, keep the unconsumed tail."""
    buf = bytearray()
    got: list[bytes] = []
    for chunk in chunks:
        buf += chunk
        used = conn.receive(memoryview(buf))
        assert 0 <= used <= len(buf)
        got.extend(bytes(m) for m in conn.messages)
        conn.messages.clear()
        del buf[:used]
    assert not buf, f"{len(buf)} bytes left unconsumed"
    return got, conn.data_to_send()


def frame(opcode: int, payload: bytes, *, fin: bool = True, client: bool = True) -> bytes:
    """A frame as the peer of a ``client``-role connection sends it."""
    return encode_frame(opcode, payload, mask=not client, fin=fin)


def stream(client: bool) -> tuple[bytes, list[bytes]]:
    frames = [
        frame(1, b"first", client=client),
        frame(2, bytes(range(200)) + b"\x00" * 100, client=client),  # 16-bit length
        frame(1, "fr\u00e9".encode()[:3], fin=False, client=client),  # split inside a UTF-8 char
        frame(9, b"ping-1", client=client),
        frame(0, "\u00e9".encode()[1:] + b"-mid-", fin=False, client=client),
        frame(10, b"pong", client=client),
        frame(0, b"-end", client=client),
        frame(2, b"", client=client),
        frame(9, b"", client=client),
        frame(2, b"z" * 125, client=client),
        encode_close(1001, "bye now", mask=not client),
    ]
    expected = [
        b"first",
        bytes(range(200)) + b"\x00" * 100,
        "fr\u00e9-mid--end".encode(),
        b"",
        b"z" * 125,
    ]
    return b"".join(frames), expected


def check_done(conn: Connection, replies: bytes, client: bool) -> None:
    assert conn.state is State.CLOSED
    assert (conn.close_code, conn.close_reason) == (1001, "bye now")
    assert (conn.text_messages, conn.binary_messages, conn.pings, conn.pongs) == (2, 3, 2, 1)
    # The replies, read back by a connection in the peer's role: two pongs, then the close echo.
    peer = Connection(client=not client)
    got, _ = feed(peer, [replies])
    assert got == []
    assert peer.pongs == 2 and peer.close_code == 1001 and peer.close_reason == ""
    if client:
        return  # masked replies differ per run; the server role's are deterministic
    assert replies == b"".join(
        (encode_frame(10, b"ping-1", mask=False), b"\x8a\x00", encode_close(1001, mask=False))
    )


@pytest.mark.parametrize("client", [True, False], ids=["client", "server"])
def test_every_two_piece_split(client: bool) -> None:
    data, expected = stream(client)
    reference = None
    for cut in range(len(data) + 1):
        conn = Connection(client=client)
        got, replies = feed(conn, [data[:cut], data[cut:]])
        assert got == expected, cut
        check_done(conn, replies, client)
        if not client:
            reference = reference or replies
            assert replies == reference


@pytest.mark.parametrize("client", [True, False], ids=["client", "server"])
def test_three_piece_splits_around_headers(client: bool) -> None:
    data, expected = stream(client)
    for first in range(0, len(data), 7):
        for second in range(first, min(len(data), first + 40)):
            conn = Connection(client=client)
            got, replies = feed(conn, [data[:first], data[first:second], data[second:]])
            assert got == expected, (first, second)
            check_done(conn, replies, client)


def test_one_byte_at_a_time() -> None:
    data, expected = stream(True)
    conn = Connection()
    got, replies = feed(conn, [data[i : i + 1] for i in range(len(data))])
    assert got == expected
    check_done(conn, replies, True)


@settings(max_examples=200, deadline=None)
@given(
    client=st.booleans(),
    messages=st.lists(
        st.tuples(
            st.sampled_from([1, 2]),
            st.lists(st.binary(max_size=300), min_size=1, max_size=4),
            st.booleans(),
        ),
        max_size=8,
    ),
    data=st.data(),
)
def test_random_splits(client: bool, messages: list, data: st.DataObject) -> None:
    wire = bytearray()
    expected = []
    for opcode, parts, ping_between in messages:
        if opcode == 1:
            parts = [p.decode("latin-1").encode() for p in parts]  # valid UTF-8 pieces
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            wire += frame(opcode if i == 0 else 0, part, fin=last, client=client)
            if ping_between and not last:
                wire += frame(9, b"p%d" % i, client=client)
        expected.append(b"".join(parts))
    wire += frame(2, b"\x07" * 70_000, client=client)  # 64-bit length
    expected.append(b"\x07" * 70_000)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=4)))
    pieces = [bytes(wire[a:b]) for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    conn = Connection(client=client)
    got, _ = feed(conn, pieces)
    assert got == expected
    assert conn.state is State.OPEN


def test_single_frame_is_zero_copy_and_fragments_are_bytes() -> None:
    buf = bytearray(frame(1, b"abc") + frame(2, b"de", fin=False) + frame(0, b"f"))
    view = memoryview(buf)
    conn = Connection()
    assert conn.receive(view) == len(buf)
    first, second = conn.messages
    assert isinstance(first, memoryview) and first.obj is buf and bytes(first) == b"abc"
    assert type(second) is bytes and second == b"def"
    server = Connection(client=False)
    server.receive(memoryview(frame(2, b"xyz", client=False)))
    assert server.messages == [b"xyz"] and type(server.messages[0]) is bytes


def test_partial_frame_consumes_nothing() -> None:
    whole = frame(2, b"q" * 70_000)
    conn = Connection()
    for cut in (0, 1, 2, 5, 9, 10, 11, len(whole) - 1):
        assert conn.receive(memoryview(whole[:cut])) == 0
    assert conn.messages == []
    assert conn.receive(memoryview(whole + b"\x82")) == len(whole)


def close_code_of(replies: bytes, client: bool) -> int | None:
    peer = Connection(client=not client)
    peer.receive(memoryview(replies))
    assert peer.state is State.CLOSED
    return peer.close_code


BAD_UTF8 = b"\xc3\x28"
VIOLATIONS = [
    ("rsv1", b"\xc1\x00", ProtocolError, 1002),
    ("rsv2", b"\xa1\x00", ProtocolError, 1002),
    ("rsv3", b"\x91\x00", ProtocolError, 1002),
    ("opcode 3", b"\x83\x00", ProtocolError, 1002),
    ("opcode 11", b"\x8b\x00", ProtocolError, 1002),
    ("masked from server", encode_frame(1, b"x", mask=True), ProtocolError, 1002),
    ("ping > 125", b"\x89\x7e\x00\x7e", ProtocolError, 1002),
    ("close > 125", b"\x88\x7e\x00\x7e", ProtocolError, 1002),
    ("fragmented ping", b"\x09\x00", ProtocolError, 1002),
    ("stray continuation", frame(0, b"x"), ProtocolError, 1002),
    ("text inside fragments", frame(1, b"a", fin=False) + frame(1, b"b"), ProtocolError, 1002),
    ("binary inside fragments", frame(2, b"a", fin=False) + frame(2, b"b"), ProtocolError, 1002),
    ("close length 1", b"\x88\x01\x03", ProtocolError, 1002),
    ("64-bit high bit", b"\x82\x7f\x80" + b"\x00" * 7, ProtocolError, 1002),
    ("bad UTF-8 text", frame(1, BAD_UTF8), InvalidPayload, 1007),
    ("bad UTF-8 fragments", frame(1, b"ok", fin=False) + frame(0, BAD_UTF8), InvalidPayload, 1007),
    ("truncated UTF-8", frame(1, "\u00e9".encode()[:1]), InvalidPayload, 1007),
    ("bad UTF-8 close reason", b"\x88\x04\x03\xe8" + BAD_UTF8, InvalidPayload, 1007),
    ("16-bit header too big", b"\x82\x7e\x40\x01", PayloadTooBig, 1009),
    ("64-bit header too big", b"\x82\x7f" + (1 << 40).to_bytes(8, "big"), PayloadTooBig, 1009),
    (
        "fragments too big",
        frame(2, b"a" * 10_000, fin=False) + b"\x00\x7e\x1c\x00",
        PayloadTooBig,
        1009,
    ),
] + [
    (
        f"close code {code}",
        encode_close(1000, mask=False)[:2] + code.to_bytes(2, "big"),
        ProtocolError,
        1002,
    )
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535)
]


@pytest.mark.parametrize(
    ("frames", "kind", "code"), [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS]
)
def test_violations(frames: bytes, kind: type, code: int) -> None:
    conn = Connection(max_message=16_384)
    prefix = frame(2, b"before")
    with pytest.raises(kind) as info:
        conn.receive(memoryview(prefix + frames))
    assert type(info.value) is kind
    assert info.value.close_code == code
    assert conn.state is State.CLOSING
    assert conn.failure is info.value
    assert [bytes(m) for m in conn.messages] == [b"before"]
    assert close_code_of(conn.data_to_send(), client=True) == code
    with pytest.raises(ProtocolError, match="failed connection"):
        conn.receive(memoryview(b""))


def test_violations_raise_from_the_header_alone() -> None:
    # 2 or 4 header bytes are enough: no need to wait for a payload we will refuse anyway.
    for head in (
        b"\x82\x7e\x40\x01",
        b"\x89\x7e",
        b"\xc2",
        b"\x82\x7f" + (1 << 40).to_bytes(8, "big"),
    ):
        conn = Connection(max_message=16_384)
        with pytest.raises(ProtocolError):
            conn.receive(memoryview(head + b"\x00"))


def test_max_message_boundary() -> None:
    conn = Connection(max_message=1000)
    assert conn.receive(memoryview(frame(2, b"a" * 1000))) == 1004
    conn.receive(memoryview(frame(2, b"a" * 600, fin=False)))
    conn.receive(memoryview(frame(0, b"b" * 400)))
    assert [len(m) for m in conn.messages] == [1000, 1000]
    small = Connection(max_message=10)
    with pytest.raises(PayloadTooBig):
        small.receive(memoryview(frame(1, b"x" * 11)))  # 7-bit length: the fast path checks too


def test_server_role_rejects_unmasked() -> None:
    conn = Connection(client=False)
    with pytest.raises(ProtocolError, match="unmasked") as info:
        conn.receive(memoryview(frame(1, b"hi", client=True)))
    assert info.value.close_code == 1002
    assert close_code_of(conn.data_to_send(), client=False) == 1002


def test_data_after_close() -> None:
    conn = Connection()
    with pytest.raises(ProtocolError, match="after the close"):
        conn.receive(memoryview(encode_close(1000, mask=False) + frame(1, b"late")))
    assert conn.state is State.CLOSED
    assert close_code_of(conn.data_to_send(), client=True) == 1000  # the echo, no second close
    conn = Connection()
    assert conn.receive(memoryview(encode_close(1000, mask=False))) == 4
    with pytest.raises(ProtocolError, match="after the close"):
        conn.receive(memoryview(frame(1, b"late")))


def test_validate_utf8_off() -> None:
    conn = Connection(validate_utf8=False)
    conn.receive(memoryview(frame(1, BAD_UTF8) + b"\x88\x04\x03\xe8" + BAD_UTF8))
    assert [bytes(m) for m in conn.messages] == [BAD_UTF8]
    assert conn.close_code == 1000 and conn.close_reason == "\ufffd("


def test_valid_close_codes_and_empty_close() -> None:
    for code in (1000, 1003, 1007, 1011, 1012, 1014, 3000, 4999):
        conn = Connection()
        conn.receive(memoryview(encode_close(code, "r", mask=False)))
        assert (conn.close_code, conn.close_reason, conn.state) == (code, "r", State.CLOSED)
        assert close_code_of(conn.data_to_send(), client=True) == code
    conn = Connection()
    conn.receive(memoryview(b"\x88\x00"))
    assert conn.close_code == 1005
    assert conn.data_to_send()[:2] == b"\x88\x80"  # empty masked close echoed


def test_we_close_first() -> None:
    conn = Connection()
    conn.send_text("bye")
    conn.send_close(1001, "going")
    assert conn.state is State.CLOSING
    conn.send_close()  # no-op
    out = conn.data_to_send()
    peer = Connection(client=False)
    peer.receive(memoryview(out))
    assert peer.messages == [b"bye"] and (peer.close_code, peer.close_reason) == (1001, "going")
    with pytest.raises(WebSocketError, match="already sent"):
        conn.send_text("more")
    # Frames the peer sent before seeing our close are still delivered; pings are not answered.
    conn.receive(memoryview(frame(1, b"late") + frame(9, b"p") + encode_close(1001, mask=False)))
    assert [bytes(m) for m in conn.messages] == [b"late"]
    assert conn.state is State.CLOSED and conn.data_to_send() == b""


def test_peer_closes_first_then_send_close() -> None:
    conn = Connection(client=False)
    conn.receive(memoryview(encode_close(1000, "done", mask=True)))
    assert conn.state is State.CLOSED
    echo = conn.data_to_send()
    assert echo == encode_close(1000, mask=False)
    conn.send_close(1000)
    assert conn.state is State.CLOSED and conn.data_to_send() == b""


def test_send_methods_frame_correctly() -> None:
    conn = Connection()
    conn.send_text("h\u00e9")
    conn.send_text(b"raw")
    conn.send_binary(b"\x00\x01")
    conn.send_ping(b"p")
    conn.send_pong(b"q")
    out = conn.data_to_send()
    assert conn.data_to_send() == b""
    peer = Connection(client=False)
    assert peer.receive(memoryview(out)) == len(out)
    assert peer.messages == ["h\u00e9".encode(), b"raw", b"\x00\x01"]
    assert (peer.text_messages, peer.binary_messages, peer.pings, peer.pongs) == (2, 1, 1, 1)
    assert peer.data_to_send() == b"\x8a\x01p"


@settings(max_examples=300, deadline=None)
@given(
    client=st.booleans(),
    junk=st.binary(max_size=400),
    max_message=st.sampled_from([10, 200, 1 << 20]),
)
def test_garbage_raises_only_protocol_errors(client: bool, junk: bytes, max_message: int) -> None:
    conn = Connection(client=client, max_message=max_message)
    try:
        used = conn.receive(memoryview(junk))
    except ProtocolError as exc:
        assert conn.failure is exc
        assert conn.state in (State.CLOSING, State.CLOSED)
        assert close_code_of(conn.data_to_send(), client) in (exc.close_code, conn.close_code)
    else:
        assert 0 <= used <= len(junk)

"""decode: orjson and json give what json.loads gives, one record or a batch of memoryviews."""

from __future__ import annotations

import json

import pytest
from harness import top_level_spans

from tb.gen import generate
from tb.worker import DECODER, decode_batch, loads
from tb.worker.decode import decoder, orjson

NAMES = ["json", "orjson"] if orjson is not None else ["json"]


@pytest.fixture(scope="module")
def records() -> list[bytes]:
    """Every event of a synthetic feed, compact and spaced, as the raw JSON of each object."""
    out = []
    for style in ("compact", "spaced"):
        for payload in generate(profile="quiet", trades=600, seed=2, style=style):
            out.extend(payload[a:b] for a, b in top_level_spans(payload))
    out += [b'{"ev":"T","sym":"\\u00e9A","p":1e3,"c":[]}', b'{"ev":"tb.gap","from":1,"to":2}']
    return out


@pytest.mark.parametrize("name", NAMES)
def test_one_and_many_decode_as_json_does(records, name):
    load, batch = decoder(name)
    want = [json.loads(r) for r in records]
    buf = bytearray(b"".join(records))
    views, pos = [], 0
    for r in records:  # memoryviews into one buffer, as read_batches hands them out
        views.append(memoryview(buf)[pos : pos + len(r)])
        pos += len(r)
    assert [load(v) for v in views] == want
    assert batch(views) == want
    assert batch(records) == want
    assert batch([]) == []


@pytest.mark.parametrize("name", NAMES)
def test_a_record_that_is_not_json_is_named(name):
    _, batch = decoder(name)
    with pytest.raises(ValueError, match=r"record 2 of the batch is not JSON .*b'\{\"sym\":'"):
        batch([b"{}", b"[1]", b'{"sym":', b"{}"])


def test_the_default_is_orjson_when_installed():
    assert DECODER == ("orjson" if orjson is not None else "json")
    assert loads(b'{"a":[1]}') == {"a": [1]}
    assert decode_batch([b"{}"]) == [{}]
    with pytest.raises(ValueError, match="unknown decoder 'simd'"):
        decoder("simd")

"""SequenceCheck: a q that repeats or goes backwards, per (event type, symbol), raw or decoded."""

from __future__ import annotations

import json
import os
import struct

from tb.pipes import read_records
from tb.worker import Anomaly, SequenceCheck


def trade(sym: str, q: int, ev: str = "T", spaced: bool = False) -> bytes:
    obj = {"ev": ev, "sym": sym, "i": "7", "x": 4, "p": 1.5, "s": 100, "t": 1, "q": q, "z": 3}
    if spaced:
        return json.dumps(obj).encode()
    return json.dumps(obj, separators=(",", ":")).encode()


def test_repeats_and_backward_steps_are_counted_per_symbol_and_event_type():
    seen: list[Anomaly] = []
    check = SequenceCheck(on_anomaly=seen.append)
    feed = [
        trade("AAPL", 10),
        trade("MSFT", 5),
        trade("AAPL", 50),  # a jump: normal, not an anomaly
        trade("AAPL", 50, spaced=True),  # repeat
        trade("AAPL", 20),  # backwards (below the highest, 50)
        trade("AAPL", 30),  # still below 50: backwards again
        trade("AAPL", 20, ev="Q"),  # quotes are numbered on their own
        trade("MSFT", 6),
        b'{"ev":"tb.gap","from":1,"to":2}',  # no symbol, no q: not checked
        b'{"ev":"T","sym":"X"}',  # no q
        b'{"ev":"T","pair":"BTC-USD","q":3}',
        b'{"ev":"T","pair":"BTC-USD","q":3}',  # repeat (crypto names the pair)
    ]
    for record in feed:
        check.check(memoryview(record))
    assert (check.repeats, check.backwards, check.anomalies) == (2, 2, 4)
    assert seen == [
        Anomaly("repeat", "T", "AAPL", 50, 50),
        Anomaly("backwards", "T", "AAPL", 20, 50),
        Anomaly("backwards", "T", "AAPL", 30, 50),
        Anomaly("repeat", "T", "BTC-USD", 3, 3),
    ]
    assert check.summary() == "q anomalies: 2 repeats, 2 backwards over 4 symbols checked"
    decoded = SequenceCheck()
    for record in feed:
        decoded.check_event(json.loads(record))
    assert (decoded.repeats, decoded.backwards, decoded.highest) == (2, 2, check.highest)


def test_the_reader_checks_every_record(pipes):
    r, w = os.pipe()
    pipes.append(r)
    for q in (1, 2, 2, 1, 3):
        body = trade("SPY", q)
        os.write(w, struct.pack("<I", len(body)) + body)
    os.close(w)
    check = SequenceCheck()
    assert len(list(read_records([r], sequence=check))) == 5
    assert (check.repeats, check.backwards) == (1, 1)

"""Planned pipes: the plan file, the vector table against the dict, pipe_for."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tb.gen import make_universe
from tb.route import Plan, PlanError, RouteError, Router, load_plan, pipe_for
from tb.route.hashing import HASHES
from tb.route.plan import PLAN_VERSION


def as_words(symbols: list[bytes]) -> tuple[np.ndarray, np.ndarray, int]:
    """Symbols as the numpy lanes hand them over: zero-padded words, lengths, the longest."""
    width = max(len(s) for s in symbols)
    k = (width + 7) // 8
    rows = np.zeros((len(symbols), 8 * k), dtype=np.uint8)
    for i, s in enumerate(symbols):
        rows[i, : len(s)] = np.frombuffer(s, np.uint8)
    words = rows.view("<u8")
    lengths = np.array([len(s) for s in symbols], dtype=np.int64)
    return (words[:, 0] if k == 1 else words), lengths, width


def big_plan(npipes: int, hash: str) -> Plan:
    rng = np.random.default_rng(7)
    tickers = [t.encode() for t in make_universe(10_000).tickers]
    options = [b"O:%s261218C%08d" % (t[:4], k) for k, t in enumerate(tickers[:500])]
    symbols = tickers + options + [b"L" * 32, b"L" * 31 + b"M"]
    return Plan(npipes, hash, {s: int(rng.integers(npipes)) for s in symbols})


@pytest.mark.parametrize("hash", ["mixed", "compat"])
def test_the_vector_table_agrees_with_the_dict(hash):
    plan = big_plan(32, hash)
    assert plan.table.max_probe > 0  # (so the probing past the home slot is exercised)
    rng = np.random.default_rng(1)
    letters = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ.:0123456789", np.uint8)
    unplanned = [
        bytes(letters[rng.integers(0, len(letters), rng.integers(1, 33))]) for _ in range(5000)
    ]
    near = [s[:-1] + b"Z" for s in plan.symbols if len(s) > 8]  # long, a key of their own
    queries = list(plan.symbols) + unplanned + near + [b""]  # (b"": key 0, as an empty slot)
    rng.shuffle(queries)
    for batch in (queries, [q for q in queries if len(q) <= 8]):
        words, lengths, width = as_words(batch)
        got = plan.table.pipes_of_words(words, lengths, 32, width).tolist()
        assert got == [plan.pick(s, 32) for s in batch]
    rows = np.zeros((len(queries), 32), np.uint8)
    for i, s in enumerate(queries):
        rows[i, : len(s)] = np.frombuffer(s, np.uint8)
    lengths = np.array([len(s) for s in queries])
    assert plan.table.vector_pipes(rows, lengths, 32).tolist() == [
        plan.pick(s, 32) for s in queries
    ]


def test_unplanned_symbols_go_by_the_hash_and_planned_ones_by_the_plan():
    plan = Plan(8, "mixed", {b"AAPL": 3, "é".encode(): 0})
    assert pipe_for("AAPL", plan=plan) == 3 and pipe_for(b"AAPL", 8, plan=plan) == 3
    assert pipe_for("é", plan=plan) == 0
    assert pipe_for("MSFT", plan=plan) == HASHES["mixed"](b"MSFT", 8) == pipe_for("MSFT", 8)
    assert pipe_for("MSFT", 8, hash="compat") == HASHES["compat"](b"MSFT", 8)
    with pytest.raises(PlanError, match="for 8 pipes, not 4"):
        pipe_for("AAPL", 4, plan=plan)
    with pytest.raises(RouteError):
        pipe_for("AAPL", 0)


def test_a_plan_file_reads_back_and_pipe_for_takes_its_path(tmp_path):
    plan = Plan(4, "compat", {b"AAPL": 3, "é".encode(): 1, b"F": 0}, "bytes", 0.3)
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    doc = json.loads(path.read_text())
    assert doc["version"] == PLAN_VERSION and doc["symbols"]["é"] == 1
    back = load_plan(path)
    assert (back.pipes, back.hash, back.symbols, back.by) == (4, "compat", plan.symbols, "bytes")
    assert back.expected_share == 0.3 and back.expected_ratio == pytest.approx(1.2)
    assert pipe_for("AAPL", plan=str(path)) == 3


@pytest.mark.parametrize(
    "text, says",
    [
        ("{nope", "not JSON"),
        ("[]", "is not a plan file"),
        ('{"format": "tb-plan", "version": 99}', "version 99; this tb reads version 1"),
        ('{"format": "tb-plan", "version": 1, "pipes": 2, "hash": "mixed"}', '"symbols"'),
        ('{"format": "tb-plan", "version": 1, "pipes": 0, "hash": "mixed", "symbols": {}}',
         "pipes must be a positive integer"),
        ('{"format": "tb-plan", "version": 1, "pipes": 2, "hash": "md5", "symbols": {}}',
         "unknown hash"),
        ('{"format": "tb-plan", "version": 1, "pipes": 2, "hash": [], "symbols": {}}',
         "unknown hash"),
        ('{"format": "tb-plan", "version": 1, "pipes": 2, "hash": "mixed", "by": {}, "symbols": {}}',
         "unknown weight"),
        ('{"format": "tb-plan", "version": 1, "pipes": 2, "hash": "mixed", "symbols": {"A": 2}}',
         "pipe 2 is not 0 to 1"),
        ('{"format": "tb-plan", "version": 1, "pipes": 2, "hash": "mixed", "symbols": {"": 0}}',
         "non-empty"),
    ],
)  # fmt: skip
def test_a_bad_plan_file_is_one_clear_error(tmp_path, text, says):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(PlanError, match=says) as err:
        load_plan(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PlanError, match="cannot read plan"):
        load_plan(tmp_path / "missing.json")


def test_the_router_takes_only_a_plan_for_its_pipes_and_hash():
    plan = Plan(4, "mixed", {b"AAPL": 1})
    with pytest.raises(PlanError, match="for 4 pipes, not 8"):
        Router(8, plan=plan)
    with pytest.raises(PlanError, match="hash mixed, not compat"):
        Router(4, hash="compat", plan=plan)
    assert Router(4, plan=plan).pick(b"AAPL", 4) == 1

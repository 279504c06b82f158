"""The examples in examples/ as tb's worker, against tb replay, their output checked.

bars_parquet's bars against pyarrow's own group-by over the same capture; split_by_symbol's
files against each symbol's records in the capture, byte for byte; top_symbols' top-N against
a count of the capture. pyarrow and rich are in the `test` extra; without them those tests skip.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from harness import expected_events, run_tb, top_level_spans

from tb.capture import CaptureWriter, read_capture

EXAMPLES = Path(__file__).parents[2] / "examples"
T0 = 1_710_509_400_000  # 2024-03-15 13:30:00 UTC


def example(name: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / f"{name}.py")]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bars_capture(path: Path, trades: int, seed: int) -> list[bytes]:
    """Trades of 40 symbols over ~4 minutes; now and then a trade up to 1 s behind the one
    before it (within the example's 2 s grace), as the consolidated feed has."""
    rng = random.Random(seed)
    syms = [f"S{k}" for k in range(40)] + ["BRK.B"]
    price = {s: rng.uniform(5, 500) for s in syms}
    payloads, t, q = [], T0 + 5_000, 0
    with CaptureWriter(str(path)) as w:
        while trades > 0:
            objs = []
            for _ in range(min(trades, rng.randint(1, 12))):
                t += rng.randint(0, 40)
                q += 1
                sym = rng.choice(syms)
                price[sym] = round(price[sym] * (1 + rng.gauss(0, 0.001)), 4)
                tt = t - rng.randint(0, 1000) if rng.random() < 0.02 else t
                objs.append({"ev": "T", "sym": sym, "i": str(q), "x": rng.randint(1, 20),
                             "p": price[sym], "s": rng.choice([1, 7, 100, 200, 1500]),
                             "t": tt, "q": q, "z": 3})  # fmt: skip
            trades -= len(objs)
            payloads.append(json.dumps(objs, separators=(",", ":")).encode())
            w.write(payloads[-1])
    return payloads


def reference_bars(payloads):
    """The bars computed by pyarrow over the capture: {(symbol, minute ms): row}."""
    import pyarrow as pa

    trades = expected_events(payloads)
    table = pa.table(
        {
            "symbol": [e["sym"] for e in trades],
            "minute": [e["t"] // 60_000 * 60_000 for e in trades],
            "p": pa.array([float(e["p"]) for e in trades], pa.float64()),
            "s": pa.array([e["s"] for e in trades], pa.int64()),
            "pv": pa.array([float(e["p"]) * e["s"] for e in trades], pa.float64()),
        }
    )
    grouped = table.group_by(["symbol", "minute"], use_threads=False).aggregate(
        [("p", "first"), ("p", "max"), ("p", "min"), ("p", "last"), ("s", "sum"), ("pv", "sum"),
         ("p", "count")]
    )  # fmt: skip
    return {(r["symbol"], r["minute"]): r for r in grouped.to_pylist()}


@pytest.mark.parametrize("processes", [1, 3])
def test_bars_match_pyarrow_over_the_same_capture(tmp_path, replay_factory, processes):
    pytest.importorskip("pyarrow", reason="bars_parquet needs pyarrow (pip install 'tb[test]')")
    import pyarrow.dataset as ds

    payloads = bars_capture(tmp_path / "feed.tbcap", 12_000, seed=processes)
    replay = replay_factory(str(tmp_path / "feed.tbcap"), "--close-after", "--rate", "40000")
    proc = run_tb(
        ["run", replay.url, "--pipes", "6", "--key", "k", "--once", "--workdir", str(tmp_path),
         "--", *example("bars_parquet"), "--out", "bars", "--processes", str(processes)]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("0 late trades not written") == processes, proc.stderr
    minutes = sorted(p.name for p in (tmp_path / "bars").iterdir())
    assert minutes == ["20240315T1330", "20240315T1331", "20240315T1332", "20240315T1333",
                       "20240315T1334"][: len(minutes)] and len(minutes) >= 4  # fmt: skip
    assert all(
        sorted(f.name for f in (tmp_path / "bars" / m).iterdir())
        == [f"part-{k}.parquet" for k in range(processes)]
        for m in minutes
    )
    got = ds.dataset(str(tmp_path / "bars")).to_table().to_pylist()
    want = reference_bars(payloads)
    assert len(got) == len(want)
    for row in got:
        minute = int(row["minute"].timestamp() * 1000)
        ref = want[(row["symbol"], minute)]
        assert (row["open"], row["high"], row["low"], row["close"]) == (
            ref["p_first"],
            ref["p_max"],
            ref["p_min"],
            ref["p_last"],
        ), row["symbol"]
        assert (row["volume"], row["trades"]) == (ref["s_sum"], ref["p_count"])
        assert row["vwap"] == pytest.approx(ref["pv_sum"] / ref["s_sum"], rel=1e-12)


def test_a_trade_after_its_minute_was_written_is_counted_late(tmp_path):
    pytest.importorskip("pyarrow", reason="bars_parquet needs pyarrow (pip install 'tb[test]')")
    bars = load_example("bars_parquet").Bars(str(tmp_path), grace_ms=2000, pipes=[0, 1])

    def trade(sym, t, p=10.0, s=100):
        return json.dumps({"ev": "T", "sym": sym, "t": t, "p": p, "s": s}).encode()

    bars.add(0, [trade("A", T0 + 1000), trade("A", T0 + 59_000, p=11.0)])
    bars.add(0, [trade("A", T0 + 62_500)])  # pipe 1 has brought nothing yet: still open
    bars.add(1, [trade("B", T0 + 30_000)])  # nor passed 13:31:02
    assert bars.files == 0
    bars.add(1, [trade("B", T0 + 62_001)])  # now both pipes have
    assert (bars.files, bars.bars, bars.written_through) == (1, 2, T0 // 60_000)
    bars.add(1, [trade("B", T0 + 59_999), b'{"ev":"tb.gap","from":1,"to":2}'])
    assert bars.late == 1 and bars.trades == 5


def test_the_splitter_writes_each_symbols_records_in_feed_order(tmp_path, replay_factory):
    cap = tmp_path / "feed.tbcap"
    assert (
        run_tb(["gen", str(cap), "--trades", "20000", "--symbols", "300", "--seed", "8"]).returncode
        == 0
    )
    payloads = list(read_capture(str(cap)))
    replay = replay_factory(str(cap), "--close-after")
    proc = run_tb(
        ["run", replay.url, "--pipes", "5", "--key", "k", "--once", "--workdir", str(tmp_path),
         "--", *example("split_by_symbol"), "--out", "trades", "--processes", "2",
         "--open-files", "16"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = defaultdict(list)
    for payload in payloads:
        for a, b in top_level_spans(payload):
            obj = json.loads(payload[a:b])
            if obj.get("ev") != "status":
                want[obj["sym"]].append(payload[a:b])
    split = load_example("split_by_symbol")
    files = {p.name for p in (tmp_path / "trades").iterdir()}
    assert files == {split.file_name(sym) for sym in want}
    for sym, records in want.items():
        text = (tmp_path / "trades" / split.file_name(sym)).read_bytes()
        assert text == b"".join(r + b"\n" for r in records), sym


def test_file_names_are_safe():
    split = load_example("split_by_symbol")
    assert split.file_name("BRK.B") == "BRK.B.jsonl"
    assert split.file_name("EUR/USD") == "EUR%2FUSD.jsonl"
    assert split.file_name("..") == "%2E..jsonl"


def test_the_top_table(tmp_path, replay_factory):
    pytest.importorskip("rich", reason="top_symbols needs rich (pip install 'tb[test]')")
    cap = tmp_path / "feed.tbcap"
    assert (
        run_tb(["gen", str(cap), "--trades", "30000", "--symbols", "400", "--seed", "9"]).returncode
        == 0
    )
    payloads = list(read_capture(str(cap)))
    replay = replay_factory(str(cap), "--close-after")
    proc = run_tb(
        ["run", replay.url, "--pipes", "4", "--key", "k", "--once", "--workdir", str(tmp_path),
         "--", *example("top_symbols"), "--top", "10", "--out", "top.json"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    trades = expected_events(payloads)
    counts = Counter(e["sym"] for e in trades)
    shares = Counter()
    for e in trades:
        shares[e["sym"]] += e["s"]
    top = json.loads((tmp_path / "top.json").read_text())
    assert top["records"] == len(trades)
    assert [r["trades"] for r in top["top"]] == [n for _, n in counts.most_common(10)]
    for row in top["top"]:
        assert row["trades"] == counts[row["symbol"]] and row["shares"] == shares[row["symbol"]]
    assert f"top 10 by trades, of {len(trades):,} records" in proc.stdout
    assert top["top"][0]["symbol"] in proc.stdout

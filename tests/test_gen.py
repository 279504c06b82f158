from __future__ import annotations

import argparse
import collections
import json
import re

import pytest

from tb.capture import read_capture
from tb.gen import WELL_KNOWN, GenStats, add_parser, generate, make_universe

REQUIRED = {"ev", "sym", "i", "x", "p", "s", "t", "q", "z"}
OPTIONAL = {"c", "trfi", "trft"}


def _events(payloads):
    for payload in payloads:
        yield from json.loads(payload)


def test_deterministic_per_seed():
    a = list(generate(profile="burst", trades=5000, seed=7))
    b = list(generate(profile="burst", trades=5000, seed=7))
    c = list(generate(profile="burst", trades=5000, seed=8))
    assert a == b
    assert a != c


def test_exact_trade_count_and_stats():
    stats = GenStats()
    payloads = list(generate(profile="quiet", trades=100_003, stats=stats))
    events = list(_events(payloads))
    assert len(events) == 100_003 == stats.trades
    assert stats.messages == len(payloads)
    assert stats.bytes == sum(map(len, payloads))
    assert list(generate(profile="burst", trades=0)) == []


@pytest.mark.parametrize(
    ("profile", "lo", "hi", "mean_lo", "mean_hi"),
    [("burst", 300, 400, 330, 370), ("quiet", 1, 5, 2.7, 3.3)],
)
def test_profile_message_sizes(profile, lo, hi, mean_lo, mean_hi):
    sizes = [len(json.loads(p)) for p in generate(profile=profile, trades=100_000)]
    body = sizes[:-1]  # the last message holds whatever is left
    assert min(body) >= lo and max(body) <= hi
    assert 1 <= sizes[-1] <= hi
    assert mean_lo <= sum(body) / len(body) <= mean_hi


@pytest.mark.parametrize("style", ["compact", "spaced"])
def test_every_trade_has_the_real_fields(style):
    events = list(_events(generate(profile="burst", trades=70_000, style=style)))
    last_t = last_q = 0
    seen_optional = collections.Counter()
    decimals = collections.Counter()
    for ev in events:
        keys = set(ev)
        assert REQUIRED <= keys <= REQUIRED | OPTIONAL, ev
        seen_optional.update(keys & OPTIONAL)
        assert ev["ev"] == "T"
        assert isinstance(ev["sym"], str) and 1 <= len(ev["sym"]) <= 7
        assert isinstance(ev["i"], str) and ev["i"].isdigit()
        assert isinstance(ev["x"], int) and 1 <= ev["x"] <= 21
        assert isinstance(ev["p"], float) and ev["p"] > 0
        assert isinstance(ev["s"], int) and ev["s"] >= 1
        assert ev["z"] in (1, 2, 3)
        assert ev["t"] >= last_t and ev["q"] > last_q
        last_t, last_q = ev["t"], ev["q"]
        if "c" in ev:
            assert ev["c"] and all(isinstance(c, int) for c in ev["c"])
        if ev["s"] < 100:
            assert 37 in ev["c"]  # odd lot
        if "trfi" in ev:
            assert ev["x"] == 4 and "trft" in ev and ev["trft"] <= ev["t"]
    # the optional fields do occur, but not everywhere
    for key in OPTIONAL:
        assert 0 < seen_optional[key] < len(events), key
    # prices are written with 2-4 decimals
    sep = ", " if style == "spaced" else ","
    raw = b"".join(generate(profile="burst", trades=20_000, style=style)).decode()
    for chunk in raw.split('"p":' if style == "compact" else '"p": ')[1:]:
        number = chunk.split(sep, 1)[0]
        decimals[len(number.split(".")[1])] += 1
    assert set(decimals) <= {2, 3, 4} and decimals[2] > decimals[4] > 0


def test_bytes_per_trade_compact_and_spaced():
    compact, spaced = GenStats(), GenStats()
    for _ in generate(profile="burst", trades=50_000, stats=compact):
        pass
    for _ in generate(profile="burst", trades=50_000, style="spaced", stats=spaced):
        pass
    assert 100 <= compact.bytes / compact.trades <= 125
    assert spaced.bytes > compact.bytes


def _mask_prices(raw: bytes) -> bytes:
    # tb gen keeps trailing zeros (190.10) where json.dumps would write 190.1
    return re.sub(rb'"p": ?[0-9.]+', b'"p":P', raw)


def test_spaced_style_matches_json_dumps_separators():
    for payload in generate(profile="quiet", trades=500, style="spaced"):
        value = json.loads(payload)
        assert _mask_prices(payload) == _mask_prices(json.dumps(value).encode())
    for payload in generate(profile="quiet", trades=500, style="compact"):
        value = json.loads(payload)
        dumped = json.dumps(value, separators=(",", ":")).encode()
        assert _mask_prices(payload) == _mask_prices(dumped)


def test_zipf_popularity_and_tickers():
    counts = collections.Counter(
        ev["sym"] for ev in _events(generate(profile="burst", trades=100_000))
    )
    total = sum(counts.values())
    top_sym, top = counts.most_common(1)[0]
    assert top_sym in {t for t, _, _ in WELL_KNOWN}
    assert top / total > 50 * (1 / 10000)  # far above uniform share
    top10 = sum(c for _, c in counts.most_common(10))
    assert 0.10 < top10 / total < 0.60
    assert len(counts) > 3000  # and a long tail
    for big in ("AAPL", "MSFT", "NVDA", "TSLA", "SPY", "QQQ", "AMD", "AMZN"):
        assert counts[big] > 0, big


def test_universe():
    u = make_universe(10000)
    assert len(u.tickers) == len(set(u.tickers)) == 10000
    assert all(t.replace(".", "").isalpha() and t.upper() == t for t in u.tickers)
    assert any("." in t for t in u.tickers[len(WELL_KNOWN) :])
    lengths = {len(t.split(".")[0]) for t in u.tickers}
    assert lengths == {1, 2, 3, 4, 5}
    assert make_universe(3).tickers == tuple(t for t, _, _ in WELL_KNOWN[:3])
    with pytest.raises(ValueError):
        make_universe(0)


def test_status_every():
    payloads = list(generate(profile="quiet", trades=300, status_every=10))
    statuses = [p for p in payloads if b'"status"' in p]
    assert statuses and all(json.loads(p)[0]["ev"] == "status" for p in statuses)
    assert payloads[10] in statuses
    assert sum(len(json.loads(p)) for p in payloads if p not in statuses) == 300


def test_bad_arguments():
    with pytest.raises(ValueError, match="profile"):
        generate(profile="loud", trades=1)
    with pytest.raises(ValueError, match="style"):
        generate(profile="burst", trades=1, style="pretty")


def _parser():
    p = argparse.ArgumentParser(prog="tb")
    add_parser(p.add_subparsers())
    return p


def test_cli_writes_a_capture(tmp_path, capsys):
    out = tmp_path / "g.tbcap"
    args = _parser().parse_args(["gen", str(out), "--trades", "1000", "--profile", "quiet"])
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip()
    assert "1000 trades" in line and "messages" in line and "bytes/trade" in line
    assert "symbols" in line and "\n" not in line
    payloads = list(read_capture(out))
    assert sum(len(json.loads(p)) for p in payloads) == 1000
    assert payloads == list(generate(profile="quiet", trades=1000))


def test_cli_rejects_bad_counts(capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["gen", "x", "--trades", "0"])
    assert exc.value.code == 2
    assert "--trades" in capsys.readouterr().err


def test_cli_unwritable(tmp_path, capsys):
    args = _parser().parse_args(["gen", str(tmp_path / "no" / "such" / "dir"), "--trades", "5"])
    assert args.func(args) == 1
    assert "cannot write" in capsys.readouterr().err

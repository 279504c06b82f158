"""Synthetic stocks trade feed: realistic message payloads, fast enough for multi-million runs.

What it imitates (see notes/feed-protocol.md): each message is a JSON array of `T` events
``{"ev":"T","sym":..,"i":"..","x":..,"p":..,"s":..,"c":[..],"t":..,"q":..,"z":..}``; `c` is
absent on plain trades; off-exchange (FINRA TRF, x=4) trades carry `trfi`/`trft` and sometimes a
sub-penny price. Symbol popularity is Zipf-like (SPY/QQQ/TSLA/NVDA/AAPL on top, a long tail of
generated 1-5 letter tickers, a few with a class suffix such as BRK.B). `t` (ms) never goes
back and `q` strictly increases. Profiles: `burst` (the open: 300-400 trades a message, ~800k
trades/s of feed time) and `quiet` (1-5 trades a message, ~2k trades/s).

How it is fast: no json.dumps per trade. Every per-trade field is drawn as a numpy array for a
chunk of CHUNK trades, the fields are interleaved into one flat argument list, and the whole
chunk is rendered by a single `%` of a repeated per-trade template. Message boundaries are
template slots too: a trade opens its message with ``[`` and the last trade closes it with
``]\\n``, so splitting the chunk text on ``\\n`` yields whole payloads (JSON has no raw newline;
the piece after the last ``\\n`` carries over into the next chunk).

The symbol universe depends only on `symbols`; the trades depend on `seed` as well.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tb.capture import CaptureWriter
from tb.cli import positive_float, positive_int
from tb.exitcode import ExitCode

PROFILES = ("burst", "quiet")
STYLES = ("compact", "spaced")

CHUNK = 32768  # trades rendered per template call

# (min trades a message, max, feed trades per second of simulated time)
_PROFILE_SHAPE = {"burst": (300, 400, 800_000.0), "quiet": (1, 5, 2_000.0)}

# 2024-03-15 09:30:00 America/New_York, the open.
_T0_MS = 1_710_509_400_000

# Most active tickers first (rank = popularity), with a plausible price and tape
# (z: 1 = NYSE listed, 2 = NYSE American/Arca/other, 3 = Nasdaq).
WELL_KNOWN: tuple[tuple[str, float, int], ...] = (
    ("SPY", 512.40, 2), ("TSLA", 163.50, 3), ("NVDA", 878.30, 3), ("QQQ", 438.20, 3),
    ("AAPL", 172.60, 3), ("AMD", 191.10, 3), ("AMZN", 178.20, 3), ("MSFT", 416.40, 3),
    ("META", 484.10, 3), ("IWM", 200.80, 2), ("SOXL", 41.30, 2), ("TQQQ", 60.10, 3),
    ("PLTR", 24.10, 1), ("GOOGL", 142.20, 3), ("SQQQ", 11.20, 3), ("INTC", 42.80, 3),
    ("BAC", 36.20, 1), ("F", 12.20, 1), ("NIO", 5.30, 1), ("AVGO", 1240.50, 3),
    ("SMCI", 1010.20, 3), ("MARA", 24.40, 3), ("COIN", 246.10, 3), ("NFLX", 605.90, 3),
    ("GOOG", 143.60, 3), ("SOFI", 7.60, 3), ("MU", 109.70, 3), ("XLF", 41.20, 2),
    ("JPM", 187.40, 1), ("UBER", 77.90, 1), ("T", 17.10, 1), ("XOM", 113.80, 1),
    ("BABA", 73.20, 1), ("HYG", 77.40, 2), ("TLT", 93.10, 3), ("RIVN", 11.00, 3),
    ("WMT", 60.10, 1), ("LCID", 3.10, 3), ("AMC", 4.20, 1), ("GME", 14.30, 1),
    ("PFE", 27.80, 1), ("C", 59.40, 1), ("WFC", 55.90, 1), ("KO", 60.20, 1),
    ("DIS", 113.20, 1), ("V", 281.60, 1), ("XLE", 93.40, 2), ("EEM", 40.90, 2),
    ("GLD", 200.70, 2), ("ARKK", 48.60, 2), ("UVXY", 9.40, 2), ("BRK.B", 412.30, 1),
    ("BRK.A", 626000.00, 1), ("BF.B", 50.20, 1),
)  # fmt: skip

# Exchange ids with their share of trades; 4 is FINRA (TRF: off-exchange, carries trfi/trft).
_EXCHANGES = np.array([4, 12, 11, 10, 8, 21, 19, 7, 15, 17, 18, 2, 1, 3, 9, 20])
_EXCHANGE_P = np.array([27, 17, 9, 8, 7, 6, 5, 3, 3, 2, 2, 2, 1, 1, 1, 1], dtype=float)
_TRF = 4
_TRF_IDS = np.array([201, 202, 203])

# Condition lists (None = field absent). 37 odd lot, 14 intermarket sweep, 41 trade-thru
# exempt, 12 Form T (extended hours). Odd lots (s < 100) always carry 37.
_COND_ROUND = (None, None, None, None, None, None, (14, 41), (41,), (14,), (12,), (12, 41))
_COND_ODD = ((37,), (37,), (37,), (14, 37, 41), (37, 41), (12, 37))

_ZIPF_EXPONENT = 1.05
ZIPF_OFFSET = 2.0  # (the default; tb gen --zipf-offset)


@dataclass(frozen=True, slots=True)
class _Style:
    trade: str  # per-trade template, 13 slots (see _render)
    sep: str  # between two trades of one message
    cond: str  # condition field, %s = joined ids
    cond_join: str
    trf: str
    status: str


_COMPACT = _Style(
    trade=('%s{"ev":"T","sym":"%s","i":"%d","x":%d,"p":%d.%s,"s":%d%s,"t":%d,"q":%d,"z":%d%s}%s'),
    sep=",",
    cond=',"c":[%s]',
    cond_join=",",
    trf=',"trfi":%d,"trft":%d',
    status='[{"ev":"status","status":"info","message":"tb gen status %d"}]',
)
_SPACED = _Style(
    trade=(
        '%s{"ev": "T", "sym": "%s", "i": "%d", "x": %d, "p": %d.%s, "s": %d%s, '
        '"t": %d, "q": %d, "z": %d%s}%s'
    ),
    sep=", ",
    cond=', "c": [%s]',
    cond_join=", ",
    trf=', "trfi": %d, "trft": %d',
    status='[{"ev": "status", "status": "info", "message": "tb gen status %d"}]',
)
_STYLES = {"compact": _COMPACT, "spaced": _SPACED}

# Fraction strings: [0, 100) two decimals, [100, 1100) three, [1100, 11100) four.
_FRACTIONS = np.array(
    [f"{k:02d}" for k in range(100)]
    + [f"{k:03d}" for k in range(1000)]
    + [f"{k:04d}" for k in range(10000)],
    dtype=object,
)


@dataclass(slots=True)
class GenStats:
    """Totals of one `generate` run, filled in as it goes."""

    messages: int = 0
    trades: int = 0
    bytes: int = 0
    status_messages: int = 0
    symbols_traded: int = 0


@dataclass(frozen=True, slots=True)
class Universe:
    """The tradable symbols, most popular first, with base price, tape and Zipf weights."""

    tickers: tuple[str, ...]
    prices: np.ndarray  # float64 base price
    tapes: np.ndarray  # int64 z
    cdf: np.ndarray  # cumulative popularity, for searchsorted sampling


def make_universe(symbols: int, zipf_offset: float = ZIPF_OFFSET) -> Universe:
    """The `symbols` most popular tickers: WELL_KNOWN first, then generated ones.

    Generated tickers are 1-5 uppercase letters (3-4 most common); ~3% get a class suffix
    (``.A``/``.B``). The tickers depend only on `symbols`; the k-th most popular (from 0) has
    weight 1 / (k + zipf_offset) ** 1.05: a larger offset flattens the head of the law (at 10,000
    symbols the top one has 6.9% of trades at the default 2, 1.7% at 10).
    """
    if symbols < 1:
        raise ValueError("symbols must be at least 1")
    if not zipf_offset > 0:
        raise ValueError("zipf_offset must be positive")
    rng = np.random.default_rng(20240315)
    tickers = [t for t, _, _ in WELL_KNOWN[:symbols]]
    prices = [p for _, p, _ in WELL_KNOWN[:symbols]]
    tapes = [z for _, _, z in WELL_KNOWN[:symbols]]
    taken = set(tickers)
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    lengths = (1, 2, 3, 4, 5)
    length_p = np.array([0.01, 0.07, 0.38, 0.44, 0.10])
    while len(tickers) < symbols:
        need = symbols - len(tickers)
        batch = max(64, need + need // 4)
        lens = rng.choice(lengths, size=batch, p=length_p)
        chars = letters[rng.integers(0, 26, size=(batch, 5))]
        suffix = rng.random(batch) < 0.03
        klass = rng.choice(["A", "B"], size=batch)
        for k in range(batch):
            n = int(lens[k])
            name = "".join(chars[k, :n])
            if suffix[k] and n <= 4:
                name += "." + klass[k]
            if name in taken:
                continue
            taken.add(name)
            tickers.append(name)
            if len(tickers) == symbols:
                break
    extra = len(tickers) - len(prices)
    if extra:
        # Small caps: lognormal around $15, some penny stocks (priced in 4 decimals below $1).
        prices.extend(np.clip(rng.lognormal(np.log(15.0), 1.3, size=extra), 0.05, 3000.0))
        tapes.extend(rng.choice([1, 2, 3], size=extra, p=[0.30, 0.15, 0.55]))
    weights = 1.0 / (np.arange(symbols) + zipf_offset) ** _ZIPF_EXPONENT
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return Universe(
        tuple(tickers),
        np.array(prices, dtype=np.float64),
        np.array(tapes, dtype=np.int64),
        cdf,
    )


def _cond_table(style: _Style, conds: tuple[tuple[int, ...] | None, ...]) -> np.ndarray:
    return np.array(
        ["" if c is None else style.cond % style.cond_join.join(map(str, c)) for c in conds],
        dtype=object,
    )


def generate(
    *,
    profile: str,
    trades: int,
    symbols: int = 10000,
    seed: int = 1,
    style: str = "compact",
    status_every: int = 0,
    stats: GenStats | None = None,
    zipf_offset: float = ZIPF_OFFSET,
) -> Iterator[bytes]:
    """Yield the message payloads of a synthetic stocks trade feed.

    Args:
        profile: "burst" (300-400 trades a message) or "quiet" (1-5).
        trades: total number of trade events, exactly.
        symbols: size of the ticker universe (Zipf popularity over it).
        seed: the same arguments always give the same bytes.
        style: "compact" (separators "," ":") or "spaced" (json.dumps defaults).
        status_every: if > 0, a status message ``[{"ev":"status","status":"info",...}]`` follows
            every `status_every` trade messages (it holds no trades).
        stats: if given, updated with running totals.
        zipf_offset: the popularity law's offset (make_universe).

    Raises ValueError for an unknown profile or style or a negative count.
    """
    if profile not in _PROFILE_SHAPE:
        raise ValueError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
    if style not in _STYLES:
        raise ValueError(f"unknown style {style!r} (choose from {', '.join(STYLES)})")
    if trades < 0 or status_every < 0:
        raise ValueError("trades and status_every must not be negative")
    universe = make_universe(symbols, zipf_offset)
    return _generate(universe, profile, trades, seed, _STYLES[style], status_every, stats)


def _generate(
    universe: Universe,
    profile: str,
    trades: int,
    seed: int,
    st: _Style,
    status_every: int,
    stats: GenStats | None,
) -> Iterator[bytes]:
    stats = stats if stats is not None else GenStats()
    lo, hi, rate = _PROFILE_SHAPE[profile]
    # Separate streams so message sizes do not depend on how trades are chunked.
    size_rng, rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    tickers = np.array(universe.tickers, dtype=object)
    n_sym = len(tickers)
    seen = np.zeros(n_sym, dtype=bool)
    cond_round = _cond_table(st, _COND_ROUND)
    cond_odd = _cond_table(st, _COND_ODD)
    exchange_p = _EXCHANGE_P / _EXCHANGE_P.sum()
    mean_gap_us = 1e6 / rate
    template = st.trade * CHUNK

    # Message boundaries: ends[k] = index one past the last trade of message k.
    n_guess = int(trades / ((lo + hi) / 2) * 1.05) + 16
    sizes = size_rng.integers(lo, hi + 1, size=n_guess)
    while sizes.sum() < trades:
        sizes = np.concatenate([sizes, size_rng.integers(lo, hi + 1, size=n_guess)])
    ends = np.cumsum(sizes)
    n_msgs = int(np.searchsorted(ends, trades)) + 1 if trades else 0
    ends = ends[:n_msgs]
    if n_msgs:
        ends[-1] = trades
    starts = np.concatenate([np.zeros(1, dtype=ends.dtype), ends[:-1]]) if n_msgs else ends

    clock_us = 0.0
    q = 4_123_456
    carry = ""
    emitted = 0
    for base in range(0, trades, CHUNK):
        n = min(CHUNK, trades - base)
        # --- draw every field for n trades ---
        sym = np.searchsorted(universe.cdf, rng.random(n), side="right")
        np.minimum(sym, n_sym - 1, out=sym)
        seen[sym] = True
        x = rng.choice(_EXCHANGES, size=n, p=exchange_p)
        trf = x == _TRF
        gaps = rng.exponential(mean_gap_us, size=n)
        t_us = clock_us + np.cumsum(gaps)
        clock_us = float(t_us[-1])
        t = _T0_MS + (t_us // 1000.0).astype(np.int64)
        qs = q + np.cumsum(1 + (rng.random(n) < 0.25) * rng.integers(1, 40, size=n))
        q = int(qs[-1])
        ids = np.where(trf, 71_675_577_000 + qs * 3, 1_000 + qs // 11)

        u = rng.random(n)
        odd = np.minimum(rng.geometric(0.06, size=n), 99)
        lot = 100 * rng.choice(np.array([1, 1, 1, 1, 2, 2, 3, 5, 10]), size=n)
        big = np.clip(rng.lognormal(np.log(400.0), 1.1, size=n), 1, 500_000).astype(np.int64)
        size = np.where(u < 0.42, odd, np.where(u < 0.86, lot, big))
        is_odd = size < 100
        cond = np.where(
            is_odd,
            cond_odd[rng.integers(0, len(cond_odd), size=n)],
            cond_round[rng.integers(0, len(cond_round), size=n)],
        )

        # Price in 1/10000 dollar around the symbol's base; decimals: 4 below $1, else
        # 2 on exchanges and sometimes 3-4 (sub-penny) on the TRF.
        price = universe.prices[sym] * (1.0 + 0.0015 * rng.standard_normal(n))
        ticks = np.maximum(np.rint(price * 10000.0).astype(np.int64), 1)
        d = rng.random(n)
        decimals = np.where(ticks < 10000, 4, np.where(trf & (d < 0.22), 4, 2))
        decimals = np.where(trf & (d >= 0.22) & (d < 0.30), 3, decimals)
        rem = ticks % 10000
        frac_index = np.where(
            decimals == 2, rem // 100, np.where(decimals == 3, 100 + rem // 10, 1100 + rem)
        )
        dollars = ticks // 10000

        trf_idx = np.flatnonzero(trf)
        trf_field = np.full(n, "", dtype=object)
        if len(trf_idx):
            trfi = _TRF_IDS[rng.integers(0, 3, size=len(trf_idx))].tolist()
            trft = (t[trf_idx] - rng.integers(0, 4, size=len(trf_idx))).tolist()
            fmt = st.trf
            trf_field[trf_idx] = [fmt % pair for pair in zip(trfi, trft, strict=True)]

        # --- message boundaries inside this chunk ---
        lead = np.full(n, st.sep, dtype=object)
        tail = np.full(n, "", dtype=object)
        k0 = int(np.searchsorted(starts, base))
        k1 = int(np.searchsorted(starts, base + n))
        lead[starts[k0:k1] - base] = "["
        e0 = int(np.searchsorted(ends, base, side="right"))
        e1 = int(np.searchsorted(ends, base + n, side="right"))
        tail[ends[e0:e1] - 1 - base] = "]\n"

        text = _render(
            template if n == CHUNK else st.trade * n,
            n,
            lead,
            tickers[sym],
            ids,
            x,
            dollars,
            _FRACTIONS[frac_index],
            size,
            cond,
            t,
            qs,
            universe.tapes[sym],
            trf_field,
            tail,
        )
        pieces = (carry + text).split("\n")
        carry = pieces.pop()
        for piece in pieces:
            payload = piece.encode("ascii")
            stats.messages += 1
            stats.bytes += len(payload)
            yield payload
            emitted += 1
            if status_every and emitted % status_every == 0:
                status = (st.status % (emitted // status_every)).encode("ascii")
                stats.status_messages += 1
                stats.messages += 1
                stats.bytes += len(status)
                yield status
        stats.trades += n
        stats.symbols_traded = int(seen.sum())


def _render(template: str, n: int, *columns: np.ndarray) -> str:
    """Fill `template` (the per-trade template repeated n times) column by column.

    Interleaving the columns into one flat list with slice assignment keeps the per-trade
    work in C; `.tolist()` turns numpy scalars into Python ints/str, which `%` formats fastest.
    """
    width = len(columns)
    flat: list[object] = [None] * (n * width)
    for j, col in enumerate(columns):
        flat[j::width] = col.tolist()
    return template % tuple(flat)


# --- CLI --------------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `tb gen` on a subparsers object."""
    p = subparsers.add_parser(
        "gen",
        help="write a synthetic stocks trade feed to a capture file",
        description=(
            "Write a realistic synthetic stocks trade feed (Zipf-popular tickers, every trade "
            "field of the real feed) to a capture file that `tb replay` can serve. "
            "The same arguments always produce the same bytes."
        ),
        epilog="exit status: 0 ok, 1 the file could not be written, 2 bad arguments",
    )
    p.add_argument("out", metavar="OUT", help="capture file to write (TBCAP1 format)")
    p.add_argument(
        "--profile",
        choices=PROFILES,
        default="burst",
        help="burst: 300-400 trades a message, like the open (default); quiet: 1-5",
    )
    p.add_argument(
        "--trades",
        type=positive_int,
        default=1_000_000,
        metavar="N",
        help="number of trades (default 1000000)",
    )
    p.add_argument(
        "--symbols",
        type=positive_int,
        default=10000,
        metavar="N",
        help="size of the ticker universe (default 10000)",
    )
    p.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default 1)")
    p.add_argument(
        "--zipf-offset",
        type=positive_float,
        default=ZIPF_OFFSET,
        metavar="Q",
        help="popularity of the k-th ticker ~ 1/(k+Q)^1.05 (default 2: the top ticker has 6.9%%"
        " of 10,000 symbols' trades; 10: 1.7%%, under the fair share of 32 pipes)",
    )
    p.add_argument(
        "--style",
        choices=STYLES,
        default="compact",
        help='compact: no spaces (default); spaced: json.dumps defaults (", " and ": ")',
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """`tb gen`: write the capture, print one summary line."""
    stats = GenStats()
    started = time.perf_counter()
    try:
        with CaptureWriter(args.out) as writer:
            for payload in generate(
                profile=args.profile,
                trades=args.trades,
                symbols=args.symbols,
                seed=args.seed,
                style=args.style,
                stats=stats,
                zipf_offset=args.zipf_offset,
            ):
                writer.write(payload)
    except OSError as exc:
        print(f"tb gen: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.ERROR
    elapsed = time.perf_counter() - started
    per_trade = stats.bytes / stats.trades if stats.trades else 0.0
    print(
        f"{args.out}: {stats.messages} messages, {stats.trades} trades, {stats.bytes} bytes, "
        f"{per_trade:.1f} bytes/trade, {stats.symbols_traded} of {args.symbols} symbols "
        f"traded ({elapsed:.2f} s)",
        flush=True,
    )
    return ExitCode.OK

"""A live table of the most traded symbols: trades, shares, last price, share of all trades.

    tb run URL --pipes 4 -- python3 examples/top_symbols.py [--top 20] [--out top.json]

One process (the counts must meet in one place; counting is a few hundred nanoseconds a trade
with orjson, so one core keeps up with a million trades a second) redraws the table on stdout
at most four times a second with rich, and once more at the end. --out writes the final
top-N as JSON. Needs rich (pip install 'tb[examples]'); decodes with orjson when installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

from tb.worker import PipeError, loads, serve

try:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table
except ImportError:
    Live = None


class Tally:
    def __init__(self) -> None:
        self.trades: Counter[str] = Counter()
        self.shares: Counter[str] = Counter()
        self.last: dict[str, float] = {}
        self.total = 0

    def add(self, pipe: int, records: list) -> None:
        trades, shares, last = self.trades, self.shares, self.last
        for e in map(loads, records):
            if e.get("ev") != "T":
                continue
            sym = e["sym"]
            trades[sym] += 1
            shares[sym] += e["s"]
            last[sym] = e["p"]
        self.total += len(records)

    def top(self, n: int) -> list[dict]:
        return [
            {"symbol": s, "trades": k, "shares": self.shares[s], "last": self.last[s]}
            for s, k in self.trades.most_common(n)
        ]

    def table(self, n: int) -> Table:
        t = Table(title=f"top {n} by trades, of {self.total:,} records")
        for name in ("#", "symbol", "trades", "shares", "last", "% of trades"):
            t.add_column(name, justify="left" if name == "symbol" else "right")
        total = sum(self.trades.values()) or 1
        for rank, row in enumerate(self.top(n), 1):
            t.add_row(
                str(rank), row["symbol"], f"{row['trades']:,}", f"{row['shares']:,}",
                f"{row['last']:.2f}", f"{100 * row['trades'] / total:.1f}",
            )  # fmt: skip
        return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="top_symbols.py", description=__doc__.split("\n")[0])
    parser.add_argument("--top", type=int, default=20, help="rows (default 20)")
    parser.add_argument("--out", help="write the final top-N here as JSON")
    parser.add_argument("fds", type=int, nargs="*", help="pipe fds (tb appends them)")
    args = parser.parse_args(argv)
    if Live is None:
        print("top_symbols: needs rich: pip install 'tb[examples]'", file=sys.stderr)
        return 2
    tally = Tally()
    console = Console()
    # Redrawn from the reading loop, between batches (a refresh thread would read the counters
    # while they change); a quiet feed is redrawn at its next batch.
    live = Live(console=console, auto_refresh=False, transient=not console.is_terminal)
    next_draw = 0.0

    def handle(pipe: int, records: list) -> None:
        nonlocal next_draw
        tally.add(pipe, records)
        now = time.monotonic()
        if now >= next_draw:
            next_draw = now + 0.25
            live.update(tally.table(args.top), refresh=True)

    with live:
        try:
            status = serve(handle, 1, batch=True, fds=args.fds or None)
        except PipeError as exc:
            print(f"top_symbols: {exc}", file=sys.stderr)
            return 1
        live.update(tally.table(args.top), refresh=True)
    if not console.is_terminal:
        console.print(tally.table(args.top))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"records": tally.total, "top": tally.top(args.top)}, f)
    return status


if __name__ == "__main__":
    sys.exit(main())

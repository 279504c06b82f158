"""1-minute bars per symbol (open, high, low, close, volume, VWAP, trades) written as Parquet.

    tb run URL --pipes 8 -- python3 examples/bars_parquet.py --out bars [--processes 4]

Each of --processes sub-workers (tb.worker.serve) reads its share of the pipes, so it sees every
trade of its symbols, in feed order, and keeps the bars of the minutes still open. A minute is
written once every pipe of that sub-worker has brought a trade --grace seconds (of feed time: the trades' `t`) past the minute's end, and whatever is open at the end
(EOF from tb, or SIGTERM):

    OUT/YYYYMMDDTHHMM/part-K.parquet     (UTC; K: the sub-worker; its symbols' bars)

columns symbol, minute (timestamp ms UTC), open, high, low, close, volume, vwap, trades. A
directory is one minute of the whole market: pyarrow.dataset.dataset(OUT) reads them all. A trade
that arrives after its minute was written is counted as late (in the line each sub-worker prints
at the end), not written. Every trade counts: the consolidated tape's rules on which sale
conditions may set the open, high, low or close are not applied here.

Needs pyarrow (pip install 'tb[examples]'); decodes with orjson when it is installed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from tb.worker import DECODER, PipeError, SubWorker, loads, serve

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:
    pa = pq = None

MINUTE_MS = 60_000


class Bars:
    """The open minutes of one sub-worker: {minute: {symbol: [o, h, l, c, volume, p*s, n]}}."""

    def __init__(self, out: str, grace_ms: int, pipes: list[int]) -> None:
        self.out = out
        self.grace_ms = grace_ms
        self.open: dict[int, dict[str, list]] = {}
        self.written_through = -1  # every minute up to this one has been written
        self.watermarks = dict.fromkeys(pipes, 0)  # pipe -> the latest trade time seen on it
        self.part = 0
        self.trades = self.late = self.bars = self.files = 0

    def add(self, pipe: int, records: list) -> None:
        latest = 0
        for e in map(loads, records):
            if e.get("ev") != "T":
                continue  # (quotes, aggregates, tb's gap records)
            t = e["t"]
            minute = t // MINUTE_MS
            if minute <= self.written_through:
                self.late += 1
                continue
            p, s = float(e["p"]), e["s"]
            bars = self.open.get(minute)
            if bars is None:
                bars = self.open[minute] = {}
            bar = bars.get(e["sym"])
            if bar is None:
                bars[e["sym"]] = [p, p, p, p, s, p * s, 1]
            else:
                if p > bar[1]:
                    bar[1] = p
                elif p < bar[2]:
                    bar[2] = p
                bar[3] = p
                bar[4] += s
                bar[5] += p * s
                bar[6] += 1
            self.trades += 1
            if t > latest:
                latest = t
        if not latest:
            return
        # Each pipe is in feed order, but the pipes are read one after the other (and one may be
        # far ahead of another after tb queued for a worker that was starting): a minute is over
        # when every pipe of this sub-worker has gone --grace past its end.
        self.watermarks[pipe] = max(latest, self.watermarks.get(pipe, 0))
        done = (min(self.watermarks.values()) - self.grace_ms) // MINUTE_MS - 1
        if self.open and min(self.open) <= done:
            self.write(through=done)

    def write(self, through: int) -> None:
        for minute in sorted(m for m in self.open if m <= through):
            self._write_minute(minute, self.open.pop(minute))
        self.written_through = max(self.written_through, through)

    def _write_minute(self, minute: int, bars: dict[str, list]) -> None:
        symbols = sorted(bars)
        rows = [bars[s] for s in symbols]
        table = pa.table(
            {
                "symbol": pa.array(symbols, pa.string()),
                "minute": pa.array([minute * MINUTE_MS] * len(rows), pa.timestamp("ms", "UTC")),
                "open": pa.array([r[0] for r in rows], pa.float64()),
                "high": pa.array([r[1] for r in rows], pa.float64()),
                "low": pa.array([r[2] for r in rows], pa.float64()),
                "close": pa.array([r[3] for r in rows], pa.float64()),
                "volume": pa.array([r[4] for r in rows], pa.int64()),
                "vwap": pa.array([r[5] / r[4] if r[4] else r[3] for r in rows], pa.float64()),
                "trades": pa.array([r[6] for r in rows], pa.int64()),
            }
        )
        name = time.strftime("%Y%m%dT%H%M", time.gmtime(minute * 60))
        folder = os.path.join(self.out, name)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"part-{self.part}.parquet")
        pq.write_table(table, path + ".tmp")
        os.replace(path + ".tmp", path)  # readers never see half a file
        self.bars += len(rows)
        self.files += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bars_parquet.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bars", help="output folder (default ./bars)")
    parser.add_argument("--processes", type=int, default=2, help="sub-workers (default 2)")
    parser.add_argument(
        "--grace", type=float, default=2.0, help="seconds of feed time a minute stays open"
    )
    parser.add_argument("fds", type=int, nargs="*", help="pipe fds (tb appends them)")
    args = parser.parse_args(argv)
    if pa is None:
        print("bars_parquet: needs pyarrow: pip install 'tb[examples]'", file=sys.stderr)
        return 2
    state: dict[str, Bars] = {}

    def start(sub: SubWorker) -> None:
        state["bars"] = Bars(args.out, int(args.grace * 1000), sub.pipes)
        state["bars"].part = sub.index

    def handle(pipe: int, records: list) -> None:
        state["bars"].add(pipe, records)

    def finish(sub: SubWorker) -> None:
        bars = state["bars"]
        if bars.open:
            bars.write(through=max(bars.open))
        print(
            f"bars_parquet: sub-worker {sub.index}: {bars.trades} trades, {bars.bars} bars in "
            f"{bars.files} files, {bars.late} late trades not written ({DECODER})",
            file=sys.stderr,
            flush=True,
        )

    try:
        return serve(
            handle, args.processes, batch=True, fds=args.fds or None, start=start, finish=finish
        )
    except PipeError as exc:
        print(f"bars_parquet: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark tb.route: µs per trade of the Python and numpy paths vs batch size.

    python3 tools/bench_route.py [--pipes N] [--spaced] [--quick]

Two feed shapes: burst-like (≈350 trades per message, as at the open) and quiet (1-5 trades per
message). For each batch size it prints the payload bytes and µs/trade of both paths; the
crossover (smallest batch where numpy wins) is what Router's DEFAULT_NUMPY_MIN_BYTES is set from.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from tb.route import Router


def make_trade(rng: random.Random, syms: list[str], weights: list[float], spaced: bool) -> bytes:
    trade = {
        "ev": "T",
        "sym": rng.choices(syms, weights)[0],
        "i": str(rng.randrange(10**13, 10**14)),
        "x": rng.randrange(1, 20),
        "p": round(rng.uniform(1, 900), 2),
        "s": rng.randrange(1, 2000),
        "c": [12, 37] if rng.random() < 0.5 else [14],
        "t": 1700000000000 + rng.randrange(10**7),
        "q": rng.randrange(10**7),
        "z": rng.randrange(1, 4),
    }
    separators = (", ", ": ") if spaced else (",", ":")
    return json.dumps(trade, separators=separators).encode()


def make_messages(n: int, per_message: tuple[int, int], spaced: bool, seed: int = 1) -> list:
    rng = random.Random(seed)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    syms = sorted({"".join(rng.choices(letters, k=rng.randint(1, 5))) for _ in range(4000)})
    weights = [1 / (rank + 1) for rank in range(len(syms))]  # Zipf-like: a few tickers dominate
    sep = b", " if spaced else b","
    return [
        b"["
        + sep.join(make_trade(rng, syms, weights, spaced) for _ in range(rng.randint(*per_message)))
        + b"]"
        for _ in range(n)
    ]


def per_trade_us(fn, batch: list, trades: int, min_time: float) -> float:
    fn(batch)  # warm up (caches, allocator)
    loops, start = 0, time.process_time()
    while True:
        fn(batch)
        loops += 1
        elapsed = time.process_time() - start
        if elapsed >= min_time:
            return elapsed / loops / trades * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipes", type=int, default=8)
    ap.add_argument("--spaced", action="store_true", help="json.dumps default separators")
    ap.add_argument("--quick", action="store_true", help="shorter timing runs")
    args = ap.parse_args()
    min_time = 0.1 if args.quick else 0.4
    router = Router(args.pipes)
    shapes = [
        ("burst ≈350/msg", (300, 400), [1, 2, 4, 8, 16]),
        ("quiet 1-5/msg", (1, 5), [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024]),
    ]
    print(f"pipes={args.pipes} style={'spaced' if args.spaced else 'compact'}")
    print(f"{'shape':16} {'msgs':>5} {'trades':>7} {'bytes':>9} {'python':>9} {'numpy':>9}  faster")
    for name, per_message, sizes in shapes:
        pool = make_messages(max(sizes), per_message, args.spaced)
        for n in sizes:
            batch = pool[:n]
            check = router.route_python(batch)
            assert check.fallback == 0 and check.malformed == 0
            trades = check.routed
            size = sum(map(len, batch))
            py = per_trade_us(router.route_python, batch, trades, min_time)
            nb = per_trade_us(router.route_numpy, batch, trades, min_time)
            winner = "numpy" if nb < py else "python"
            print(f"{name:16} {n:5} {trades:7} {size:9} {py:9.3f} {nb:9.3f}  {winner}")


if __name__ == "__main__":
    main()

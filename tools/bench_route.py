"""Benchmark tb.route: µs per trade of every lane of the Router, side by side, vs batch size.

    python3 tools/bench_route.py [--pipes N] [--spaced] [--quick]

Three shapes: burst-like (≈350 trades per message, as at the open), quiet (1-5 trades per
message), and burst-like with the keys in another order (which every feed-shaped lane declines:
the general way's figure). For each batch size it prints the payload bytes and the CPU µs per
trade of each lane on the same batch, in the same process: the reference (route_python), the
general numpy lane, the small lane, the span lane on spans already found, the span lane after
scan_data_frames has found them, and route_frames (the span lane finding the frames itself).
The crossover of the small and span lanes is what Router's DEFAULT_NUMPY_MIN_BYTES is set from;
docs/performance.md keeps the figures that earn each lane its place.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np

from tb.route import SPAN_PAD, Router
from tb.ws import Opcode, encode_frame
from tb.ws.scan import scan_data_frames


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


def per_trade_us(fn, trades: int, min_time: float) -> float:
    fn()  # warm up (caches, allocator)
    loops, start = 0, time.process_time()
    while True:
        fn()
        loops += 1
        elapsed = time.process_time() - start
        if elapsed >= min_time:
            return elapsed / loops / trades * 1e6


def framed(batch: list) -> tuple:
    """The messages as server text frames in an arena, as the ingest receives them: (arena,
    payload starts, payload ends, where the frames end, the payloads as views of the arena)."""
    frames, starts, ends = bytearray(), [], []
    for m in batch:
        f = encode_frame(Opcode.TEXT, m, mask=False)
        starts.append(len(frames) + len(f) - len(m))
        frames += f
        ends.append(len(frames))
    end = len(frames)
    frames += bytes(SPAN_PAD)
    a = np.frombuffer(frames, np.uint8)
    view = memoryview(frames)
    views = [view[s:e] for s, e in zip(starts, ends, strict=True)]
    return a, np.array(starts, np.int64), np.array(ends, np.int64), end, views


def reordered(batch: list) -> list:
    """The same trades with "sym" before "ev": valid, but not the feed's layout -- every
    feed-shaped lane declines it, and the general way (reference or numpy) routes it."""
    return [m.replace(b'{"ev":"T",', b"{").replace(b'"p":', b'"ev":"T","p":') for m in batch]


def lanes(router: Router, batch: list) -> dict:
    """Each lane as a call on `batch` (None: the lane declines the batch)."""
    a, starts, ends, end, views = framed(batch)
    max_message = 16 << 20
    mask = router.scratch.bools(end + 63)

    def scan_then_spans():
        s, e, _ops, _stop = scan_data_frames(a, memoryview(a), 0, end, max_message, mask)
        return router.route_spans(a, np.asarray(s, np.int64), np.asarray(e, np.int64))

    calls = {
        "reference": lambda: router.route_python(batch),
        "numpy": lambda: router.route_numpy(batch),
        "small": lambda: router.small_runs(views),
        "spans": lambda: router.route_spans(a, starts, ends),
        "scan+spans": scan_then_spans,
        "frames": lambda: router.route_frames(a, 0, end, max_message),
    }
    out = {}
    for name, call in calls.items():
        got = call()
        declined = got is None or (name == "frames" and got[0] is None)
        out[name] = None if declined else call
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipes", type=int, default=8)
    ap.add_argument("--spaced", action="store_true", help="json.dumps default separators")
    ap.add_argument("--quick", action="store_true", help="shorter timing runs")
    args = ap.parse_args()
    min_time = 0.1 if args.quick else 0.4
    router = Router(args.pipes)
    shapes = [
        ("burst ≈350/msg", (300, 400), [1, 2, 4, 8, 16], False),
        ("quiet 1-5/msg", (1, 5), [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 8192], False),
        ("reordered keys", (300, 400), [1, 4, 16], True),
    ]
    names = ["reference", "numpy", "small", "spans", "scan+spans", "frames"]
    print(f"pipes={args.pipes} style={'spaced' if args.spaced else 'compact'}; µs per trade (CPU)")
    print(
        f"{'shape':16} {'msgs':>5} {'trades':>7} {'bytes':>9} "
        + " ".join(f"{n:>10}" for n in names)
    )
    for name, per_message, sizes, reorder in shapes:
        pool = make_messages(max(sizes), per_message, args.spaced)
        if reorder:
            pool = reordered(pool)
        for n in sizes:
            batch = pool[:n]
            check = router.route_python(batch)
            assert check.fallback == 0 and check.malformed == 0
            trades = check.routed
            size = sum(map(len, batch))
            cells = []
            for call in lanes(router, batch).values():
                cells.append(
                    "declines" if call is None else f"{per_trade_us(call, trades, min_time):.3f}"
                )
            print(f"{name:16} {n:5} {trades:7} {size:9} " + " ".join(f"{c:>10}" for c in cells))


if __name__ == "__main__":
    main()

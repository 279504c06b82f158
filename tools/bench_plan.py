"""Benchmark planned pipes: the busiest pipe against the fair share, and the router's CPU.

    python3 tools/bench_plan.py --pipes 32 CAPTURE... --plan NAME=FILE... [--cpu CAPTURE]

Balance: every capture is routed (Router.route_arena: the span lane, as tb run's ingest routes a
large receive; the general way for what it declines) by the mixed hash, the compat hash and
each plan, and the busiest pipe's records are reported over the fair share (records / pipes).

CPU (--cpu CAPTURE): the span lane on receives of 16 burst messages from that capture, the hash
router and each plan's router taking turns on the same receives, in the same process, several
rounds; the median CPU µs per trade of each, and its ratio to the hash's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from tb.capture import read_capture
from tb.route import Router, load_plan


def arena(payloads: list[bytes]):
    """The payloads one after another with the span lane's padding: (array, starts, ends)."""
    sizes = np.array([len(p) for p in payloads], dtype=np.int64)
    ends = np.cumsum(sizes)
    buf = np.zeros(int(ends[-1]) + 512, dtype=np.uint8)
    buf[: int(ends[-1])] = np.frombuffer(b"".join(payloads), np.uint8)
    return buf, ends - sizes, ends


def per_pipe(router: Router, payloads: list[bytes], per_batch: int = 16) -> list[int]:
    counts = [0] * router.npipes
    for k in range(0, len(payloads), per_batch):
        part = payloads[k : k + per_batch]
        a, starts, ends = arena(part)
        batch, _ = router.route_arena(a, starts, ends)
        if batch is None:
            batch = router.route(part)
        for pipe, n in enumerate(batch.counts):
            counts[pipe] += n
    return counts


def balance(captures: list[str], plans: dict, npipes: int) -> list[str]:
    rows = ["| capture | " + " | ".join(["mixed", "compat", *plans]) + " |"]
    rows.append("| --- |" + " --- |" * (2 + len(plans)))
    for cap in captures:
        payloads = list(read_capture(cap))
        cells = []
        routers = [Router(npipes), Router(npipes, hash="compat")]
        routers += [Router(npipes, hash=p.hash, plan=p) for p in plans.values()]
        for router in routers:
            counts = per_pipe(router, payloads)
            cells.append(f"{max(counts) / (sum(counts) / npipes):.3f}")
        rows.append(f"| {cap} | " + " | ".join(cells) + " |")
    return rows


def cpu(capture: str, plans: dict, npipes: int, rounds: int) -> list[str]:
    payloads = [p for p in read_capture(capture)][:1600]
    receives = [arena(payloads[k : k + 16]) for k in range(0, len(payloads) - 15, 16)]
    trades = 0
    routers = {"hash (mixed)": Router(npipes)}
    routers.update({name: Router(npipes, hash=p.hash, plan=p) for name, p in plans.items()})
    times: dict[str, list[float]] = {name: [] for name in routers}
    for r in range(rounds):
        for name, router in routers.items() if r % 2 == 0 else reversed(routers.items()):
            n = 0
            t0 = time.process_time()
            for a, starts, ends in receives:
                batch = router.route_spans(a, starts, ends)
                n += batch.routed
            times[name].append((time.process_time() - t0) / n * 1e6)
            trades = n
    base = statistics.median(times["hash (mixed)"])
    rows = [
        f"span lane, {len(receives)} receives of 16 messages ({trades:,} trades), {rounds} rounds"
    ]
    rows += ["| router | CPU µs per trade (median) | × hash |", "| --- | --- | --- |"]
    for name, ts in times.items():
        m = statistics.median(ts)
        rows.append(f"| {name} | {m:.4f} | {m / base:.3f} |")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("captures", nargs="*", metavar="CAPTURE")
    p.add_argument("--pipes", type=int, default=32)
    p.add_argument("--plan", action="append", default=[], metavar="NAME=FILE")
    p.add_argument("--cpu", metavar="CAPTURE", help="measure the span lane's CPU on this capture")
    p.add_argument("--rounds", type=int, default=15)
    ns = p.parse_args()
    plans = {}
    for item in ns.plan:
        name, _, path = item.partition("=")
        plans[name] = load_plan(path)
    if ns.captures:
        print("\n".join(balance(ns.captures, plans, ns.pipes)), flush=True)
    if ns.cpu:
        print("\n".join(cpu(ns.cpu, plans, ns.pipes, ns.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

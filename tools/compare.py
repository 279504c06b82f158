"""Profile several balancers side by side in one run and print a markdown table with ratios.

    python3 tools/compare.py [--workloads burst,quiet,trickle] [--runs 3] \\
        [--balancer NAME=CMD ...] \\    # each CMD takes the C original's CLI
        [--busy-poll USEC] \\           # also tb with tb run --busy-poll USEC
        [--sleeping-worker]            # trickle: feed->worker, the worker sleeping in poll

tb itself is always included. Each workload runs every balancer in turn, --runs times, and the
table shows the median of each figure and the ratio to tb's. Uses tb profile's harness.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from tb.profile import run_profile


def profile_args(
    workload: str, balancer: str | None, ns: argparse.Namespace, busy_poll: int = 0
) -> argparse.Namespace:
    return argparse.Namespace(
        workload=workload,
        trades=ns.trades.get(workload),
        rate=ns.rate if workload == "trickle" else None,
        symbols=10000,
        pipes=ns.pipes,
        loop="auto",
        hash="mixed",
        busy_poll=busy_poll,
        splice=True,
        tls="none",
        balancer=balancer,
        runs=1,
        timeout=600.0,
        json=True,
        plot=None,
        sleeping_worker=ns.sleeping_worker,
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workloads", default="burst,quiet,trickle")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--pipes", type=int, default=32)
    p.add_argument("--rate", type=float, default=2000.0, help="trickle rate (trades/s)")
    p.add_argument("--burst-trades", type=int, default=5_000_000)
    p.add_argument("--quiet-trades", type=int, default=4_000_000)  # (1M reads low: README)
    p.add_argument("--balancer", action="append", default=[], metavar="NAME=CMD")
    p.add_argument(
        "--busy-poll", type=int, default=0, metavar="USEC", help="add tb --busy-poll USEC"
    )
    p.add_argument(
        "--sleeping-worker",
        action="store_true",
        help="trickle: measure feed->worker with a worker that sleeps in poll (tb profile's flag)",
    )
    ns = p.parse_args()
    ns.trades = {"burst": ns.burst_trades, "quiet": ns.quiet_trades, "trickle": int(ns.rate * 10)}
    entries = [("tb", None, 0)]
    if ns.busy_poll:
        entries.append((f"tb --busy-poll {ns.busy_poll}", None, ns.busy_poll))
    entries += [(*b.split("=", 1), 0) for b in ns.balancer]
    rows = []
    print(f"# {time.strftime('%Y-%m-%d')}, {ns.runs} runs each, median", file=sys.stderr)
    for workload in ns.workloads.split(","):
        results: dict[str, list] = {}
        for _ in range(ns.runs):
            for name, cmd, busy in entries:
                r = run_profile(profile_args(workload, cmd, ns, busy), live=False)
                print(f"{workload} {name}: {r.cpu_s_per_million:.3f} CPU s/M, {r.trades_per_s:,.0f}/s "
                      f"{r.latency_us.get('p50', 0):.0f}/{r.latency_us.get('p99', 0):.0f} us"
                      f"{' ' + r.error if r.error else ''}", file=sys.stderr)  # fmt: skip
                results.setdefault(name, []).append(r)
        base = statistics.median(r.cpu_s_per_million for r in results["tb"]) or 1e-9
        for name, rs in results.items():
            cpu = statistics.median(r.cpu_s_per_million for r in rs)
            rate = statistics.median(r.trades_per_s for r in rs)
            share = statistics.median(r.max_pipe_share for r in rs) * 100
            lat = ""
            if workload == "trickle":
                lat = (f"{statistics.median(r.latency_us.get('p50', 0) for r in rs):,.0f} / "
                       f"{statistics.median(r.latency_us.get('p99', 0) for r in rs):,.0f}")  # fmt: skip
            rss = (f"{statistics.median(r.median_rss_mib for r in rs):.0f} / "
                   f"{max(r.max_rss_mib for r in rs):.0f}")  # fmt: skip
            rows.append((workload, name, cpu, cpu / base, rate, share, lat, rss))
    print(
        "| workload | balancer | CPU s per million trades | × tb | trades/s | busiest pipe"
        " | latency p50 / p99 µs | RSS median / max MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for workload, name, cpu, ratio, rate, share, lat, rss in rows:
        print(
            f"| {workload} | {name} | {cpu:.3f} | {ratio:.2f} | {rate:,.0f} | {share:.1f}%"
            f" | {lat} | {rss} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Profile several balancers side by side in one run and print a markdown table with ratios.

    python3 tools/compare.py [--workloads burst,quiet,trickle] [--runs 3] \\
        [--balancer NAME=CMD ...] \\    # each CMD takes the C original's CLI
        [--busy-poll USEC] \\           # also tb with tb run --busy-poll USEC
        [--sleeping-worker]            # trickle: feed->worker, the worker sleeping in poll

tb itself is always included. Each workload runs every balancer in turn, --runs times, and the
table shows the median of each figure and the ratio to tb's. Below it, for each other balancer,
in how many rounds it beat tb in the same round (CPU per million; trickle: p50 latency too):
on a noisy machine the paired count says more than the medians. Uses tb profile's harness.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from tb.cli import microseconds, positive_float, positive_int
from tb.profile import WORKLOADS, run_profile
from tb.sched import DEFAULT_SLICE_US


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
        sched_slice=DEFAULT_SLICE_US,
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
    p.add_argument(
        "--workloads", default="burst,quiet,trickle", help="comma-separated: burst, quiet, trickle"
    )
    p.add_argument("--runs", type=positive_int, default=3)
    p.add_argument("--pipes", type=positive_int, default=32)
    p.add_argument("--rate", type=positive_float, default=2000.0, help="trickle rate (trades/s)")
    p.add_argument("--burst-trades", type=positive_int, default=5_000_000)
    p.add_argument("--quiet-trades", type=positive_int, default=4_000_000)  # (1M reads low)
    p.add_argument(
        "--balancer",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="another balancer, CMD taking the C original's CLI (KEY URL NPIPES WORKDIR WORKER...)",
    )
    p.add_argument(
        "--busy-poll", type=microseconds, default=0, metavar="USEC", help="add tb --busy-poll USEC"
    )
    p.add_argument(
        "--sleeping-worker",
        action="store_true",
        help="trickle: measure feed->worker with a worker that sleeps in poll (tb profile's flag)",
    )
    ns = p.parse_args()
    workloads = ns.workloads.split(",")
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"--workloads: unknown workload {w!r} (choose from {', '.join(WORKLOADS)})")
    ns.trades = {"burst": ns.burst_trades, "quiet": ns.quiet_trades, "trickle": int(ns.rate * 10)}
    entries = [("tb", None, 0)]
    if ns.busy_poll:
        entries.append((f"tb --busy-poll {ns.busy_poll}", None, ns.busy_poll))
    for b in ns.balancer:
        name, eq, cmd = b.partition("=")
        if not eq or not name.strip() or not cmd.strip():
            p.error(f'--balancer wants NAME=CMD, e.g. "C original=./lb": {b!r}')
        if name in (e[0] for e in entries):
            p.error(f"--balancer: the name {name!r} is taken")
        entries.append((name, cmd, 0))
    rows = []
    print(f"# {time.strftime('%Y-%m-%d')}, {ns.runs} runs each, median", file=sys.stderr)
    paired = []
    for workload in workloads:
        results: dict[str, list] = {}
        for _ in range(ns.runs):
            for name, cmd, busy in entries:
                r = run_profile(profile_args(workload, cmd, ns, busy), live=False)
                print(f"{workload} {name}: {r.cpu_s_per_million:.3f} CPU s/M, {r.trades_per_s:,.0f}/s "
                      f"{r.latency_us.get('p50', 0):.0f}/{r.latency_us.get('p99', 0):.0f} us"
                      f"{' ' + r.error if r.error else ''}", file=sys.stderr)  # fmt: skip
                results.setdefault(name, []).append(r)
        good = {name: [r for r in rs if not r.error] for name, rs in results.items()}
        base = statistics.median(r.cpu_s_per_million for r in good["tb"]) if good["tb"] else 0
        for name, rs in results.items():
            if name != "tb":
                paired.append((workload, name, _wins(results["tb"], rs)))
            ok = good[name]
            if not ok:
                rows.append(f"| {workload} | {name} | failed: {rs[0].error} | | | | | |")
                continue
            cpu = statistics.median(r.cpu_s_per_million for r in ok)
            rate = statistics.median(r.trades_per_s for r in ok)
            share = statistics.median(r.max_pipe_share for r in ok) * 100
            lat = ""
            if workload == "trickle":
                lat = (f"{statistics.median(r.latency_us.get('p50', 0) for r in ok):,.0f} / "
                       f"{statistics.median(r.latency_us.get('p99', 0) for r in ok):,.0f}")  # fmt: skip
            rss = (f"{statistics.median(r.median_rss_mib for r in ok):.0f} / "
                   f"{max(r.max_rss_mib for r in ok):.0f}")  # fmt: skip
            ratio = f"{cpu / base:.2f}" if base else "-"
            failed = f" ({len(rs) - len(ok)} of {len(rs)} runs failed)" if len(ok) < len(rs) else ""
            rows.append(
                f"| {workload} | {name}{failed} | {cpu:.3f} | {ratio} | {rate:,.0f} | {share:.1f}%"
                f" | {lat} | {rss} |"
            )
    print(
        "| workload | balancer | CPU s per million trades | × tb | trades/s | busiest pipe"
        " | latency p50 / p99 µs | RSS median / max MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print()
    for workload, name, wins in paired:
        print(f"- {workload}, {name} against tb in the same round: {wins}")
    return 0


def _wins(tb_runs: list, runs: list) -> str:
    """In how many rounds `runs` had the lower CPU per million (and p50, when measured) than
    tb in the same round; rounds where either failed do not count."""
    pairs = [(t, r) for t, r in zip(tb_runs, runs, strict=True) if not t.error and not r.error]
    n = len(pairs)
    if not n:
        return "no round where both ran"
    cpu = sum(r.cpu_s_per_million < t.cpu_s_per_million for t, r in pairs)
    out = f"lower CPU per million in {cpu} of {n}"
    if all(t.latency_us.get("p50") and r.latency_us.get("p50") for t, r in pairs):
        p50 = sum(r.latency_us["p50"] < t.latency_us["p50"] for t, r in pairs)
        out += f", lower p50 in {p50} of {n}"
    return out


if __name__ == "__main__":
    raise SystemExit(main())

"""Profile several balancers side by side in one run and print a markdown table with ratios.

    python3 tools/compare.py [--workloads burst,quiet,trickle] [--runs 3] \\
        [--balancer NAME=CMD ...] \\    # each CMD takes the C original's CLI
        [--reader both|python|native] \\ # which worker reads the pipes (default both)
        [--busy-poll USEC] \\           # also tb with tb run --busy-poll USEC
        [--sleeping-worker]            # trickle: feed->worker, the worker sleeping in poll

tb itself is always included. Each workload runs every balancer in turn, --runs times, and the
table shows the median of each figure and the ratio to tb's. Below it, for each other balancer,
in how many rounds it beat tb in the same round (CPU per million; trickle: p50 latency too):
on a noisy machine the paired count says more than the medians. Uses tb profile's harness.

The reader matters: a balancer's cost per trade depends on how fast the worker empties the
pipes (a balancer that writes once per trade pays more for each write into a fuller pipe).
`python` is tb's counting worker (tb.pipes.count_worker); `native` is tools/native_reader.c,
compiled on first use with `cc` into $TB_CACHE (~/.cache/tb), which polls the pipes and reads
each one dry at once. With `both` every round runs each balancer with each reader, and each
reader's rows have their own ratios. Trickle measures latency, which only the Python worker
stamps: it always uses that one. Without `cc`, `both` falls back to the Python worker and says
so; `native` is an error.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import tb.profile
from tb.cli import microseconds, positive_float, positive_int
from tb.profile import WORKLOADS, run_profile
from tb.sched import DEFAULT_SLICE_US

NATIVE_SOURCE = Path(__file__).with_name("native_reader.c")
COUNT_WORKER = [sys.executable, "-m", "tb.pipes.count_worker"]


class NoNativeReader(Exception):
    """The native reader cannot be built here; the message says why."""


def native_reader() -> Path:
    """The compiled tools/native_reader.c, built with `cc -O2` on first use into $TB_CACHE
    (~/.cache/tb), named by the source's hash so an edited source is rebuilt."""
    try:
        source = NATIVE_SOURCE.read_bytes()
    except OSError as exc:
        raise NoNativeReader(f"cannot read {NATIVE_SOURCE}: {exc.strerror or exc}") from None
    cache = Path(os.environ.get("TB_CACHE") or Path.home() / ".cache" / "tb")
    binary = cache / f"native_reader-{hashlib.sha256(source).hexdigest()[:16]}"
    if binary.exists():
        return binary
    cc = shutil.which("cc")
    if cc is None:
        raise NoNativeReader("no C compiler: `cc` is not on PATH")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NoNativeReader(f"cannot create {cache}: {exc.strerror or exc}") from None
    tmp = binary.with_suffix(f".tmp{os.getpid()}")
    proc = subprocess.run(
        [cc, "-O2", "-o", str(tmp), str(NATIVE_SOURCE)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[0]
        raise NoNativeReader(f"cc could not build {NATIVE_SOURCE.name}: {why}")
    os.replace(tmp, binary)
    return binary


@contextmanager
def reading_with(reader: Path | None):
    """Within the block, tb profile's runs start `reader` as the worker, with the count
    worker's own arguments (--out, --progress, the fds), in place of the count worker.
    None: the count worker."""
    original = tb.profile._balancer_cmd

    def balancer_cmd(args, url, work, worker):
        if worker[: len(COUNT_WORKER)] != COUNT_WORKER:
            raise SystemExit(
                "compare.py: tb profile no longer starts tb.pipes.count_worker as it expects;"
                " the native reader cannot be put in its place"
            )
        return original(args, url, work, [str(reader), *worker[len(COUNT_WORKER) :]])

    if reader is not None:
        tb.profile._balancer_cmd = balancer_cmd
    try:
        yield
    finally:
        tb.profile._balancer_cmd = original


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
        "--reader",
        choices=("both", "python", "native"),
        default="both",
        help="the worker that reads the pipes: tb's Python counting worker, a native (C) reader"
        " that reads them dry at once, or both in every round (default)",
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
    readers: dict[str, Path | None] = {}
    if ns.reader in ("both", "python"):
        readers["python"] = None
    if ns.reader in ("both", "native"):
        try:
            readers["native"] = native_reader()
        except NoNativeReader as exc:
            if ns.reader == "native":
                p.error(f"--reader native: {exc}; --reader python runs without it")
            print(f"compare.py: {exc}: the native reader is skipped, the Python counting worker"
                  " reads", file=sys.stderr)  # fmt: skip
    if "native" in readers and "trickle" in workloads:
        print("compare.py: trickle measures latency, which only the Python counting worker"
              " stamps: it reads there", file=sys.stderr)  # fmt: skip
    rows = []
    print(f"# {time.strftime('%Y-%m-%d')}, {ns.runs} runs each, median; readers:"
          f" {', '.join(readers)}", file=sys.stderr)  # fmt: skip
    paired = []
    for workload in workloads:
        used = {k: v for k, v in readers.items() if workload != "trickle" or v is None}
        if not used:  # trickle with --reader native
            used = {"python": None}
        results: dict[tuple[str, str], list] = {}
        for _ in range(ns.runs):
            for reader, binary in used.items():
                with reading_with(binary):
                    for name, cmd, busy in entries:
                        r = run_profile(profile_args(workload, cmd, ns, busy), live=False)
                        print(f"{workload} {name} [{reader}]: {r.cpu_s_per_million:.3f} CPU s/M, "
                              f"{r.trades_per_s:,.0f}/s {r.latency_us.get('p50', 0):.0f}/"
                              f"{r.latency_us.get('p99', 0):.0f} us, {r.delivered:,} records"
                              f"{' ' + r.error if r.error else ''}", file=sys.stderr)  # fmt: skip
                        results.setdefault((reader, name), []).append(r)
        good = {key: [r for r in rs if not r.error] for key, rs in results.items()}
        for (reader, name), rs in results.items():
            tb_ok = good[(reader, "tb")]
            base = statistics.median(r.cpu_s_per_million for r in tb_ok) if tb_ok else 0
            if name != "tb":
                paired.append((workload, name, reader, _wins(results[(reader, "tb")], rs)))
            ok = good[(reader, name)]
            if not ok:
                rows.append(f"| {workload} | {name} | {reader} | failed: {rs[0].error} | | | | | |")
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
                f"| {workload} | {name}{failed} | {reader} | {cpu:.3f} | {ratio} | {rate:,.0f}"
                f" | {share:.1f}% | {lat} | {rss} |"
            )
    print(
        "| workload | balancer | reader | CPU s per million trades | × tb | trades/s | busiest pipe"
        " | latency p50 / p99 µs | RSS median / max MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print()
    for workload, name, reader, wins in paired:
        print(f"- {workload}, {name} against tb in the same round ({reader} reader): {wins}")
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

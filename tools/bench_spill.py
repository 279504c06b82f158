"""Spill throughput: a burst behind a worker that reads nothing for a while, then reads fast.

    python3 tools/bench_spill.py [--trades 5000000] [--sleep 8] [--pipes 4] [--runs 1]

Each round runs the same burst (tb gen's burst profile, cached like tb profile's) through
`tb run --once` three ways, one after the other:
- `spill`: --max-buffer 64M --on-overflow spill (the spill directory on the work dir's disk);
- `memory`: --max-buffer 2G (the queue holds the whole burst in memory: no pause, no spill);
- `block`: --max-buffer 64M (today's default policy: the socket pauses at the bound).
The worker sleeps --sleep seconds, then reads every pipe dry (tb's counting worker). Reported per run: how long the server took to send
the burst, tb's routing rate and CPU per million over the streaming span, what went to the
spool and at what rate (spilled bytes over the streaming span), the drain (records and MB the
worker read after waking, over the time it took), tb's peak RSS, and pauses.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tb.counters import read_line  # noqa: E402
from tb.profile import cached_capture  # noqa: E402
from tb.replay import LISTENING  # noqa: E402

MODES = {
    "spill": ["--max-buffer", "64M", "--on-overflow", "spill"],
    "memory": ["--max-buffer", "2G"],
    "block": ["--max-buffer", "64M"],
}


def peak_rss(pid: int, out: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out.append(int(line.split()[1]) << 10)
        except OSError:
            return
        time.sleep(0.02)


def one_run(cap: Path, mode: str, ns: argparse.Namespace, work: Path) -> dict:
    replay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tb",
            "replay",
            str(cap),
            "--listen",
            "127.0.0.1:0",
            "--close-after",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = LISTENING.search(replay.stdout.readline()).group(1)
    out = work / f"{mode}.json"
    reader = f'exec {sys.executable} -m tb.pipes.count_worker --out {out} "$@"'
    worker = ["sh", "-c", f"sleep {ns.sleep}; {reader}", "sh"]
    cmd = [sys.executable, "-m", "tb", "run", url, "--pipes", str(ns.pipes), "--key", "k",
           "--once", *MODES[mode], "--workdir", str(work), "--", *worker]  # fmt: skip
    tb = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=peak_rss, args=(tb.pid, samples, stop), daemon=True)
    sampler.start()
    _, err = tb.communicate(timeout=600)
    stop.set()
    replay.terminate()
    _, served = replay.communicate(timeout=30)
    final = next(p for ln in err.splitlines() if (p := read_line(ln)) and p[0] == "final")[1]
    sent = re.search(r"sent (\d+) trades .* in ([\d.]+) s", served)
    result = {"mode": mode, "rc": tb.returncode, "send_s": float(sent.group(2))}
    stream_s = float(final["stream_s"])
    result.update(
        stream_s=stream_s,
        trades_per_s=float(final["trades_per_s"]),
        cpu_per_m=float(final["cpu_s_per_million"]),
        pauses=int(final["pauses"]),
        spilled_mb=int(final.get("spilled_bytes", 0)) / 1e6,
        spill_mb_s=int(final.get("spilled_bytes", 0)) / 1e6 / stream_s if stream_s else 0.0,
        peak_rss_mb=max(samples, default=0) / 1e6,
    )
    got = json.loads(out.read_text())
    drain_s = got["last"] - got["first"]
    result.update(records=got["records"], read_mb=sum(got["bytes"]) / 1e6)
    result.update(drain_s=drain_s, drain_mb_s=result["read_mb"] / drain_s if drain_s else 0.0)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trades", type=int, default=5_000_000)
    p.add_argument("--sleep", type=float, default=8.0)
    p.add_argument("--pipes", type=int, default=4)
    p.add_argument("--runs", type=int, default=1)
    ns = p.parse_args()
    cap = cached_capture("burst", ns.trades, 10000)
    work = Path(tempfile.mkdtemp(prefix="tb-bench-spill-"))
    try:
        print(
            "| round | mode | server send s | tb trades/s | CPU s/M | pauses | spilled MB |"
            " to spool MB/s | drain s | drain MB/s | peak RSS MB |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for k in range(ns.runs):
            for mode in MODES:
                r = one_run(cap, mode, ns, work)
                assert r["records"] == ns.trades and r["rc"] == 0, r
                print(
                    f"| {k + 1} | {mode} | {r['send_s']:.2f} | {r['trades_per_s']:,.0f} |"
                    f" {r['cpu_per_m']:.3f} | {r['pauses']} | {r['spilled_mb']:.0f} |"
                    f" {r['spill_mb_s']:.0f} | {r['drain_s']:.2f} | {r['drain_mb_s']:.0f} |"
                    f" {r['peak_rss_mb']:.0f} |",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

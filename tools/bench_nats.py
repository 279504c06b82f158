#!/usr/bin/env python3
"""The same burst end to end through NATS JetStream, side by side with a direct tb run.

    python3 tools/bench_nats.py [--trades 1000000] [--pipes 4] [--rounds 3]

Each round, on this machine and loopback only: (1) direct: tb replay -> tb run -> the counting
worker; (2) via NATS: tb replay -> tb run -> tb publish -> nats-server -js (file store, a
temporary directory) -> tb consume -> the counting worker, with the stream made and the consumer
started before the feed. Printed: each process's CPU seconds per million trades (tb and tb
publish from their final lines, tb consume likewise, each worker from its parent's child usage,
nats-server from /proc) and the rate the far worker saw, first record to last. Needs nats-server
on PATH (apt-get install nats-server) and nats-py.
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tb.counters import parse_line

ROOT = Path(__file__).resolve().parent.parent
TB = [sys.executable, "-m", "tb"]
COUNT_WORKER = [sys.executable, "-m", "tb.pipes.count_worker"]
LISTENING = re.compile(r"listening on (\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def progress(path: Path) -> tuple[int, float, float]:
    """count_worker --progress: (records, first record's time, latest record's time)."""
    if not path.exists() or path.stat().st_size < 24:
        return 0, 0.0, 0.0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 24, access=mmap.ACCESS_READ) as m:
        return struct.unpack_from("<Qdd", m, 0)


def final(text: str, prefix: str) -> dict[str, str]:
    lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    if not lines:
        raise SystemExit(f"no '{prefix}' line in:\n{text[-3000:]}")
    return parse_line(lines[-1])


def replay(capture: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [*TB, "replay", "--listen", "127.0.0.1:0", "--close-after", "--once", str(capture)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    m = LISTENING.search(proc.stdout.readline())
    if not m:
        raise SystemExit("tb replay did not start")
    return proc, m.group(1)


def wait_count(path: Path, n: int, timeout: float) -> tuple[int, float, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = progress(path)
        if got[0] >= n:
            return got
        time.sleep(0.05)
    raise SystemExit(f"the worker saw {progress(path)[0]} of {n} records in {timeout:.0f} s")


def direct(capture: Path, n: int, pipes: int, work: Path) -> dict[str, float]:
    prog = work / "direct.progress"
    server, url = replay(capture)
    before = children_cpu()
    run = subprocess.run(
        [*TB, "run", url, "--key", "k", "--pipes", str(pipes), "--once", "-q", "--"]
        + [*COUNT_WORKER, "--progress", str(prog)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    subtree = children_cpu() - before
    server.wait(30)
    got, first, last = progress(prog)
    if got != n:
        raise SystemExit(f"direct: the worker saw {got} of {n}\n{run.stderr[-2000:]}")
    tb = float(final(run.stderr, "tb: final")["cpu_s"])
    per_m = 1e6 / n
    return {
        "tb": tb * per_m,
        "worker": (subtree - tb) * per_m,
        "rate": n / max(last - first, 1e-9),
    }


async def make_stream(url: str, name: str) -> None:
    import nats
    from nats.js.api import StorageType

    nc = await nats.connect(url)
    await nc.jetstream().add_stream(name=name, subjects=[f"{name}.*"], storage=StorageType.FILE)
    await nc.close()


def via_nats(capture: Path, n: int, pipes: int, work: Path, server: subprocess.Popen, url: str,
             stream: str, publish_args: tuple[str, ...] = ()) -> dict[str, float]:  # fmt: skip
    asyncio.run(make_stream(url, stream))
    prog = work / f"{stream}.progress"
    cwd = work / stream
    cwd.mkdir()
    nats0 = proc_cpu(server.pid)
    consume = subprocess.Popen(
        [*TB, "consume", url, "--stream", stream, "--partitions", f"0-{pipes - 1}"]
        + ["--workdir", str(cwd), "-q", "--", *COUNT_WORKER, "--progress", str(prog)],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # (bound and fetching)
    feed, feed_url = replay(capture)
    before = children_cpu()
    run = subprocess.Popen(
        [*TB, "run", feed_url, "--key", "k", "--pipes", str(pipes), "--once", "-q", "--"]
        + [*TB, "publish", url, "--stream", stream, "-q", *publish_args],
        stderr=subprocess.PIPE,
        text=True,
    )
    run_err = run.communicate(timeout=600)[1]
    run_tree = children_cpu() - before
    got, first, last = wait_count(prog, n, 300)
    nats_cpu = proc_cpu(server.pid) - nats0
    before = children_cpu()
    consume.send_signal(signal.SIGTERM)
    consume_err = consume.communicate(timeout=60)[1]
    consume_tree = children_cpu() - before
    feed.wait(30)
    tb = float(final(run_err, "tb: final")["cpu_s"])
    publish = float(final(run_err, "tb publish: final")["cpu_s"])
    cons = float(final(consume_err, "tb consume: final")["cpu_s"])
    per_m = 1e6 / n
    return {
        "tb": tb * per_m,
        "publish": publish * per_m,
        "nats-server": nats_cpu * per_m,
        "consume": cons * per_m,
        "worker": (consume_tree - cons) * per_m,
        "publish start-up": (run_tree - tb - publish) * per_m,  # (python, imports, connect)
        "rate": n / max(last - first, 1e-9),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trades", type=int, default=1_000_000)
    ap.add_argument("--pipes", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--message-size", help="tb publish --message-size (default: its own)")
    args = ap.parse_args()
    publish_args = ("--message-size", args.message_size) if args.message_size else ()
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not os.access(binary, os.X_OK):
        print("nats-server is not installed (apt-get install nats-server)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        capture = work / "burst.tbcap"
        subprocess.run(
            [*TB, "gen", str(capture), "--trades", str(args.trades), "--seed", "11"], check=True
        )
        port = free_port()
        server = subprocess.Popen(
            [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(work / "js")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        results: dict[str, list[dict[str, float]]] = {"direct": [], "nats": []}
        try:
            for r in range(args.rounds):
                results["direct"].append(direct(capture, args.trades, args.pipes, work))
                results["nats"].append(
                    via_nats(
                        capture,
                        args.trades,
                        args.pipes,
                        work,
                        server,
                        f"nats://127.0.0.1:{port}",
                        f"B{r}",
                        publish_args,
                    )  # fmt: skip
                )
                print(f"round {r + 1}: direct {results['direct'][-1]}", file=sys.stderr)
                print(f"round {r + 1}: nats   {results['nats'][-1]}", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(10)
    print(f"{args.trades:,} burst trades, {args.pipes} pipes, median of {args.rounds} rounds")
    print("| path | process | CPU s per million trades |")
    print("|---|---|---|")
    for path, rows in results.items():
        for key in rows[0]:
            if key == "rate":
                continue
            print(f"| {path} | {key} | {statistics.median(r[key] for r in rows):.3f} |")
        total = statistics.median(sum(v for k, v in r.items() if k != "rate") for r in rows)
        rate = statistics.median(r["rate"] for r in rows)
        print(f"| {path} | **all** | {total:.3f} (far worker: {rate:,.0f} trades/s) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

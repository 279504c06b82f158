"""`tb demo`: the whole path on loopback, no API key, no internet.

Generates a synthetic feed, serves it with `tb replay`, runs `tb run --once` against it with the
example worker, shows live progress from tb's --stats lines, and checks at the end that the worker
received exactly the trades the server sent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

from tb.cli import CLIError, positive_int
from tb.counters import read_line
from tb.exitcode import ExitCode
from tb.replay import LISTENING

__all__ = ["add_parser", "main"]

_SENT = re.compile(r"sent (\d+) trades in (\d+) messages")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on loopback with a synthetic feed (no key needed)",
        description="Generate a synthetic feed, serve it with tb replay on 127.0.0.1, run tb run "
        "against it with the example worker, show live progress and a final check that every "
        "trade the server sent reached the worker. Ends by itself.",
    )
    p.add_argument(
        "--trades", type=positive_int, default=1_000_000, help="trades to send (default 1M)"
    )
    p.add_argument(
        "--profile",
        choices=["burst", "quiet"],
        default="burst",
        help="frame profile (default burst)",
    )
    p.add_argument("--pipes", type=positive_int, default=4, help="pipes to the worker (default 4)")
    p.add_argument("--out", default="tb-demo", help="output folder (default ./tb-demo)")
    p.add_argument(
        "--tls",
        action="store_true",
        help="serve wss:// with a throwaway self-signed certificate, which tb run verifies",
    )
    p.set_defaults(func=main)


def _wait_listening(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = LISTENING.search(line)
        if m:
            return m.group(1)
    raise RuntimeError("tb replay did not start listening")


def main(args: argparse.Namespace) -> int:
    out = os.path.abspath(args.out)
    try:
        os.makedirs(out, exist_ok=True)
        replay_log = open(os.path.join(out, "replay.log"), "w")
    except OSError as exc:
        raise CLIError(f"cannot write to --out {args.out}: {exc.strerror or exc}") from None
    py = sys.executable
    run_log_path = os.path.join(out, "tb-run.log")
    print(
        f"tb demo: {args.trades:,} {args.profile} trades over {args.pipes} pipes; output in {out}"
    )
    replay = subprocess.Popen(
        [py, "-m", "tb", "replay", "--listen", "127.0.0.1:0", "--close-after",
         "--gen-profile", args.profile, "--gen-trades", str(args.trades)]
        + (["--tls-self-signed"] if args.tls else []),
        stdout=subprocess.PIPE, stderr=replay_log, text=True,
    )  # fmt: skip
    try:
        try:
            url = _wait_listening(replay, 120)
        except RuntimeError as exc:
            print(f"tb demo: {exc} (see {replay_log.name})", file=sys.stderr)
            return ExitCode.ERROR
        print(f"tb demo: replay server on {url}")
        extra: list[str] = []
        if args.tls:
            with open(replay_log.name) as f:
                m = re.search(r"--cafile (\S+)", f.read())
            if not m:
                print(
                    f"tb demo: tb replay did not say where its certificate is ({replay_log.name})"
                )
                return ExitCode.ERROR
            extra = ["--cafile", m.group(1)]
        return _run(args, py, url + "/stocks", out, run_log_path, replay_log.name, extra)
    finally:
        replay.terminate()
        try:
            replay.wait(5)
        except subprocess.TimeoutExpired:
            replay.kill()
        replay_log.close()


def _run(
    args, py: str, url: str, out: str, run_log_path: str, replay_log_path: str, extra: list[str]
) -> int:
    summary_path = os.path.join(out, "worker-summary.json")
    if os.path.exists(summary_path):
        os.unlink(summary_path)
    cmd = [py, "-m", "tb", "run", url, "--pipes", str(args.pipes), "--key", "demo", "--once",
           "--stats", "1", "--workdir", out, *extra, "--",
           py, "-m", "tb.pipes.example_worker", "--out", "worker-summary.json"]  # fmt: skip
    t0 = time.monotonic()
    final = None
    with open(run_log_path, "w") as run_log:
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=run_log, text=True)
        for line in proc.stderr:
            run_log.write(line)
            kind, pairs = read_line(line) or (None, {})
            if kind == "stats":
                print(
                    f"  {time.monotonic() - t0:5.1f} s  {int(pairs['trades_per_s']):>12,} trades/s"
                    f"  routed {int(pairs['routed']):>12,}  queued {int(pairs['queued']):>9,}",
                    flush=True,
                )
            elif kind == "final":
                final = pairs
            if "flushing" in line or "connection ended" in line:
                print(f"  {time.monotonic() - t0:5.1f} s  tb: {line.split(': ', 1)[-1].strip()}")
        rc = proc.wait()
    wall = time.monotonic() - t0
    with open(replay_log_path) as f:
        sent = sum(int(m.group(1)) for m in _SENT.finditer(f.read()))
    try:
        with open(summary_path) as f:
            worker = json.load(f)
    except (OSError, ValueError):
        worker = None
    received = worker.get("records") if worker else None
    print(f"tb demo: tb run exited with {rc} after {wall:.1f} s (log: {run_log_path})")
    if final:
        print(
            f"tb demo: balancer CPU {float(final['cpu_s']):.2f} s"
            f" = {float(final['cpu_s_per_million']):.3f} CPU s per million trades"
        )
    if worker:
        per_pipe = worker.get("per_pipe", [])
        print(f"tb demo: per-pipe records {per_pipe}")
    ok = rc == 0 and received == sent == args.trades
    verdict = "OK" if ok else "MISMATCH"
    print(
        f"tb demo: {verdict}: server sent {sent:,} trades, worker received "
        f"{'nothing' if received is None else f'{received:,}'}; worker summary in {summary_path}"
    )
    return ExitCode.OK if ok else ExitCode.ERROR

"""`tb profile`: the whole pipeline on loopback, measured side by side in one run.

Theory of operation: a replay server (a `tb replay` process; in this process, paced, for latency
runs) serves a cached synthetic capture; the balancer under test (`tb run`, or any command with the
C original's positional CLI via --balancer) routes it to `tb.pipes.count_worker`, which counts
records at memchr speed and keeps its running total in a small mmap'd file. This process samples
that total and the balancer's CPU time (/proc/PID/stat) and RSS every 10 ms. CPU per million
trades is the balancer's CPU from the server's first streamed trade (it prints "streaming to
ADDR") to the worker's last record, divided by the records: the same yardstick for every
balancer, start-up and shutdown excluded. (Not from the worker's first record: a balancer may
route a few hundred thousand trades into the pipes before a slow-starting worker reads one.)
RSS is reported as its median over that window (the steady state) and its peak. For `tb run`
the report adds tb's own counters: syscalls per trade, time per stage (the frames of a large
receive, or of a small receive of whole text frames, are found inside route), the busiest
pipe's share.

Latency (`--workload trickle`): the server is paced and logs when each slice of frames was sent:
the kernel's transmit timestamp of its last byte, the moment loopback hands it to the balancer's
socket (without one -- TLS -- the time just before the send; the report says which). The worker
stamps each record's `q` with the time its read returned (CLOCK_MONOTONIC is shared by all
processes), so the latency is arrival minus send, per trade. The worker busy-polls its pipes
(count_worker --latency --spin: every ready pipe is read and stamped before any record is
parsed), so a record is stamped microseconds after it enters its pipe: feed->pipe, what the
balancer adds. With --sleeping-worker it sleeps in poll as a real worker does, and the figure is
feed->worker (the worker's own wake-up included, which on a VM is often the larger part).
tools/compare.py can put a native reader (tools/native_reader.c) in the count worker's place,
with the same arguments and the same --progress file, to measure balancers against a reader
that empties the pipes at native speed.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tb.cli import (
    CLIError,
    add_logging_arguments,
    microseconds,
    positive_float,
    positive_int,
    slice_microseconds,
)
from tb.counters import read_line
from tb.exitcode import ExitCode
from tb.pipes.count_worker import progress_size, read_progress
from tb.replay import LISTENING, STREAMING_TO
from tb.sched import DEFAULT_SLICE_US

__all__ = ["add_parser", "main", "ProfileResult", "run_profile"]

WORKLOADS = {
    # name: (gen profile, default trades, default rate or None)
    "burst": ("burst", 5_000_000, None),
    "quiet": ("quiet", 1_000_000, None),
    "trickle": ("quiet", 0, 2000.0),
}

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class ProfileResult:
    workload: str
    balancer: str
    trades: int
    pipes: int
    loop: str
    tls: str
    busy_poll_us: int = 0
    sched_slice_us: int | None = None  # tb's --sched-slice (None: another balancer)
    style: str = "compact"  # the feed's JSON style (spaced: json.dumps' default)
    splice: bool = True  # tb's (tb run --no-splice: False)
    delivered: int = 0
    seconds: float = 0.0
    trades_per_s: float = 0.0
    cpu_s: float = 0.0
    cpu_s_per_million: float = 0.0
    max_rss_mib: float = 0.0
    median_rss_mib: float = 0.0  # over the window (while trades flow): the steady state
    max_pipe_share: float = 0.0
    fair_share: float = 0.0
    plan_share: float | None = None  # the plan's expected busiest share (tb with --plan)
    latency_us: dict = field(default_factory=dict)
    latency_kind: str = "feed->pipe"  # or feed->worker, with --sleeping-worker
    send_times: str = ""  # where the latency's start comes from
    tb: dict = field(default_factory=dict)  # tb's own final counters
    samples: list = field(default_factory=list)  # (t, delivered, cpu_s)
    extra: int = 0  # records beyond the trades sent (a balancer that routes status messages)
    ok: bool = False
    error: str = ""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "profile",
        help="measure the whole pipeline on loopback (trades/s, CPU per million, latency)",
        description="Run replay server -> balancer -> counting worker on loopback and report "
        "trades/s, the balancer's CPU seconds per million trades (from the server's first "
        "streamed trade to the worker's last record), syscalls per trade, time per stage, "
        "latency percentiles (trickle), RSS (median while trades flow, and peak) and the "
        "busiest pipe's share. The capture is generated once and cached (~/.cache/tb or "
        "$TB_CACHE).",
    )
    p.add_argument(
        "--workload",
        choices=list(WORKLOADS),
        default="burst",
        help="burst (~350 trades/frame, unpaced), quiet (1-5 trades/frame, unpaced), "
        "trickle (quiet frames paced at --rate, measures latency)",
    )
    p.add_argument(
        "--trades", type=positive_int, help="trades to send (burst 5M, quiet 1M, trickle 10 s)"
    )
    p.add_argument("--rate", type=positive_float, help="paced trades/s (trickle default 2000)")
    p.add_argument(
        "--symbols", type=positive_int, default=10000, help="distinct symbols (default 10000)"
    )
    p.add_argument("--pipes", type=positive_int, default=32, help="pipes (default 32)")
    p.add_argument(
        "--style",
        choices=["compact", "spaced"],
        default="compact",
        help="the feed's JSON style: compact (the real feed's) or spaced (json.dumps' default, "
        "as Python test servers send it)",
    )
    p.add_argument(
        "--loop",
        choices=["auto", "epoll", "uring"],
        default="auto",
        help="tb's event loop (tb run --loop)",
    )
    p.add_argument("--hash", choices=["mixed", "compat"], default="mixed", help="tb's hash")
    p.add_argument(
        "--plan",
        metavar="FILE",
        help="tb's planned pipes (tb run --plan; made by tb plan for --pipes): the report shows"
        " the plan's expected busiest share beside the measured one",
    )
    p.add_argument(
        "--busy-poll",
        type=microseconds,
        default=0,
        metavar="USEC",
        help="tb's busy polling (tb run --busy-poll; default 0)",
    )
    p.add_argument(
        "--sched-slice",
        type=slice_microseconds,
        default=DEFAULT_SLICE_US,
        metavar="USEC",
        help=f"tb's CPU time slice (tb run --sched-slice; default {DEFAULT_SLICE_US}, 0: the"
        " kernel's default)",
    )
    p.add_argument(
        "--no-splice",
        dest="splice",
        action="store_false",
        help="tb copies every record into the pipes (tb run --no-splice)",
    )
    p.add_argument(
        "--tls",
        choices=["none", "userspace", "ktls"],
        default="none",
        help="serve wss:// (self-signed)",
    )
    p.add_argument(
        "--balancer",
        metavar="CMD",
        help="profile another balancer with the C original's CLI (CMD KEY URL NPIPES WORKDIR WORKER...)"
        " instead of tb, e.g. --balancer ./lb or --balancer 'python3 tools/naive_client.py'"
        " (--loop, --hash, --busy-poll and --no-splice are tb's: not with --balancer)",
    )
    p.add_argument(
        "--sleeping-worker",
        action="store_true",
        help="trickle: the worker sleeps in poll (feed->worker latency, its wake-up included)"
        " instead of busy-polling (feed->pipe)",
    )
    p.add_argument(
        "--runs", type=positive_int, default=1, help="repeat and report each run (default 1)"
    )
    p.add_argument(
        "--timeout", type=positive_float, default=300.0, help="give up on a run after SECONDS"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--plot", metavar="PNG", help="draw throughput (and latency) to PNG (matplotlib)"
    )
    add_logging_arguments(p)
    # tb run's own options, with their defaults: another balancer has none of them (main)
    flags = {
        "loop": "--loop",
        "hash": "--hash",
        "plan": "--plan",
        "busy_poll": "--busy-poll",
        "sched_slice": "--sched-slice",
        "splice": "--no-splice",
    }
    tb_only = {k: (flag, p.get_default(k)) for k, flag in flags.items()}
    p.set_defaults(func=main, tb_only=tb_only)


# -- the capture ----------------------------------------------------------------------------------
def cached_capture(
    profile: str, trades: int, symbols: int, seed: int = 1, style: str = "compact"
) -> Path:
    """The synthetic capture for these parameters, generated on first use."""
    from tb.capture import CaptureWriter
    from tb.gen import generate

    base = Path(os.environ.get("TB_CACHE") or Path.home() / ".cache" / "tb")
    base.mkdir(parents=True, exist_ok=True)
    spaced = "" if style == "compact" else f"-{style}"
    path = base / f"profile-{profile}-{trades}-{symbols}-{seed}{spaced}.tbcap"
    if not path.exists():
        print(f"tb profile: generating {trades:,} {profile} trades once -> {path}", file=sys.stderr)
        tmp = path.with_suffix(".tmp")
        with CaptureWriter(str(tmp)) as cap:
            for payload in generate(
                profile=profile, trades=trades, symbols=symbols, seed=seed, style=style
            ):
                cap.write(payload)
        os.replace(tmp, path)
    return path


# -- sampling -------------------------------------------------------------------------------------
def _cpu_and_rss(pid: int) -> tuple[float, int] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # fields[11], [12]: utime, stime (ticks); fields[21]: rss (pages). Threads included.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK, int(fields[21]) * _PAGE


class _Progress:
    """The count worker's --progress file: total, first/last arrival, per-pipe counts."""

    def __init__(self, path: Path, npipes: int) -> None:
        self.path = path
        self.npipes = npipes
        self.map: mmap.mmap | None = None

    def _open(self) -> bool:
        if self.map is None:
            size = progress_size(self.npipes)
            try:
                with open(self.path, "rb") as f:
                    if os.fstat(f.fileno()).st_size < size:
                        return False
                    self.map = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
            except OSError:
                return False
        return True

    def total(self) -> int:
        return struct.unpack_from("<Q", self.map, 0)[0] if self._open() else 0

    def snapshot(self) -> tuple[int, float, float, list[int]]:
        if not self._open():
            return 0, 0.0, 0.0, [0] * self.npipes
        return read_progress(self.map, self.npipes)


def _interp(samples: list[tuple[float, int, float]], t: float) -> float:
    """CPU time at wall time t, from the samples (linear between neighbours)."""
    prev = samples[0]
    for s in samples:
        if s[0] >= t:
            if s[0] == prev[0]:
                return s[2]
            return prev[2] + (s[2] - prev[2]) * (t - prev[0]) / (s[0] - prev[0])
        prev = s
    return samples[-1][2]


# -- one run --------------------------------------------------------------------------------------
def run_profile(args: argparse.Namespace, live: bool = True) -> ProfileResult:
    gen_profile, default_trades, default_rate = WORKLOADS[args.workload]
    rate = args.rate if args.rate is not None else default_rate
    trades = args.trades or (default_trades if default_trades else int((rate or 2000) * 10))
    name = args.balancer or "tb"
    res = ProfileResult(args.workload, name, trades, args.pipes, args.loop, args.tls)
    if name == "tb":
        res.busy_poll_us = args.busy_poll
        res.sched_slice_us = args.sched_slice
        res.splice = args.splice
    res.style = getattr(args, "style", "compact")
    if getattr(args, "sleeping_worker", False):
        res.latency_kind = "feed->worker"
    try:
        cap = cached_capture(gen_profile, trades, args.symbols, style=res.style)
    except OSError as exc:
        raise CLIError(
            f"cannot write the capture cache ({exc.filename or 'TB_CACHE'}): {exc.strerror or exc}"
        ) from None
    work = Path(tempfile.mkdtemp(prefix="tb-profile-"))
    py = sys.executable
    latency = args.workload == "trickle"
    server = replay = None
    send_log: list = []
    streamed: list[float] = []  # when the server started streaming trades (time.monotonic)
    try:
        if rate is None:
            cmd = [py, "-m", "tb", "replay", str(cap), "--listen", "127.0.0.1:0"]
            if args.tls != "none":
                cmd += ["--tls-self-signed"] + (["--tls-ktls"] if args.tls == "ktls" else [])
            replay = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            m = LISTENING.search(replay.stdout.readline())
            if not m:
                res.error = "the replay server did not start"
                return res
            url = m.group(1)
            threading.Thread(
                target=_stamp_streaming, args=(replay.stdout, streamed), daemon=True
            ).start()
        else:
            from tb.capture import read_capture
            from tb.replay import ReplayServer

            payloads = list(read_capture(str(cap)))
            ctx = None
            if args.tls != "none":
                from tb.certs import self_signed_context

                ctx, _ = self_signed_context(str(work / "cert.pem"), ktls=args.tls == "ktls")
            server = ReplayServer(
                payloads,
                rate=rate,
                send_log=send_log,
                ssl_context=ctx,
                on_streaming=lambda peer: streamed.append(time.monotonic()),
            )
            server.start()
            url = server.url
        res = _measure(args, res, url + "/stocks", work, latency, live, streamed)
        if latency and res.ok:
            if (work / "worker.json").exists():
                res.latency_us = _latency(work / "worker.json", payloads, send_log)
                kernel = sum(1 for entry in send_log if entry[3])
                res.send_times = (
                    "the kernel's transmit timestamps"
                    if kernel == len(send_log)
                    else f"taken before each send ({kernel:,} of {len(send_log):,} slices had"
                    " a transmit timestamp)"
                )
            else:
                res.error = "the worker wrote no latency stamps"
        return res
    finally:
        if replay is not None:
            replay.terminate()
            replay.wait(10)
        if server is not None:
            server.stop()
        # the logs of a good run are of no further use; a failed run's are kept, and named
        if res.ok:
            shutil.rmtree(work, ignore_errors=True)
        elif res.error and str(work) not in res.error:
            res.error += f" (logs kept in {work})"


def _balancer_cmd(args, url: str, work: Path, worker: list[str]) -> list[str]:
    if args.balancer:
        return [
            *shlex.split(args.balancer),
            "profile-key",
            url,
            str(args.pipes),
            str(work),
            *worker,
        ]
    cmd = [sys.executable, "-m", "tb", "run", url, "--pipes", str(args.pipes), "--key", "profile-key",
           "--loop", args.loop, "--hash", args.hash, "--workdir", str(work), "--stats", "0",
           "--busy-poll", str(args.busy_poll), "--sched-slice", str(args.sched_slice)]  # fmt: skip
    if not args.splice:
        cmd.append("--no-splice")
    if getattr(args, "plan", None):
        cmd += ["--plan", args.plan]
    if args.tls != "none":
        cmd += ["--insecure", "--tls", "ktls" if args.tls == "ktls" else "userspace"]
    return [*cmd, "--", *worker]


def _stamp_streaming(lines, streamed: list[float]) -> None:
    """Stamp when the replay server prints that it started streaming (its stdout, flushed)."""
    for line in lines:
        if not streamed and STREAMING_TO.search(line):
            streamed.append(time.monotonic())


def _measure(
    args,
    res: ProfileResult,
    url: str,
    work: Path,
    latency: bool,
    live: bool,
    streamed: list[float],
) -> ProfileResult:
    progress_path = work / "progress"
    worker = [sys.executable, "-m", "tb.pipes.count_worker", "--out", str(work / "worker.json"),
              "--progress", str(progress_path)]  # fmt: skip
    if latency:
        worker += ["--latency"] if res.latency_kind == "feed->worker" else ["--latency", "--spin"]
    err_path = work / "balancer.log"
    cmd = _balancer_cmd(args, url, work, worker)
    with open(err_path, "w") as err:
        try:
            # cwd: relative paths in --balancer CMD are the user's (WORKDIR is an argument)
            proc = subprocess.Popen(
                cmd, stdout=err, stderr=err, cwd=os.getcwd(), start_new_session=True
            )
        except OSError as exc:  # not found, not executable
            res.error = f"cannot start the balancer {cmd[0]}: {exc.strerror or exc}"
            return res
    progress = _Progress(progress_path, args.pipes)
    samples: list[tuple[float, int, float]] = []
    t0 = time.monotonic()
    rss: list[int] = []  # per sample
    last_print = 0.0
    delivered = 0
    try:
        while time.monotonic() - t0 < args.timeout:
            got = _cpu_and_rss(proc.pid)
            delivered = progress.total()
            now = time.monotonic()
            if got is None or proc.poll() is not None:
                res.error = f"the balancer exited early{_first_error(err_path)} (see {err_path})"
                break
            samples.append((now, delivered, got[0]))
            rss.append(got[1])
            if live and now - last_print >= 0.5:
                last_print = now
                _live_line(samples, res.trades, rss[-1])
            if delivered >= res.trades:
                break
            time.sleep(0.01)
        else:
            res.error = f"timed out after {args.timeout:.0f} s with {delivered:,} of {res.trades:,} delivered"
    finally:
        if live:
            print(file=sys.stderr)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if latency:  # the worker writes its stamps at EOF, or when told to stop
            _wait_for(work / "worker.json", 5)
            if not (work / "worker.json").exists():
                _signal_group(proc.pid, signal.SIGTERM)  # a worker that never sees EOF
                _wait_for(work / "worker.json", 15)
        _signal_group(proc.pid, signal.SIGKILL)  # whatever is left of the group
    res.samples = [(round(t - t0, 4), n, round(c, 3)) for t, n, c in samples]
    res.delivered = delivered
    res.max_rss_mib = max(rss, default=0) / (1 << 20)
    # The worker's own figures, from its progress file: a balancer whose worker never sees EOF
    # (the C original leaks its write ends into the worker) is measured the same way.
    delivered, first, last, per_pipe = progress.snapshot()
    res.delivered = delivered
    if not res.error and delivered:
        # From the server's first trade (the balancer may route many before a slow-starting
        # worker reads its first record: those count too) to the worker's last record.
        if streamed:
            first = min(first, streamed[0])
        res.seconds = last - first
        res.trades_per_s = delivered / res.seconds if res.seconds > 0 else 0.0
        res.cpu_s = _interp(samples, last) - _interp(samples, first)
        during = [m for (t, _, _), m in zip(samples, rss, strict=True) if first <= t <= last]
        res.median_rss_mib = statistics.median(during or rss or [0]) / (1 << 20)
        res.cpu_s_per_million = res.cpu_s / (delivered / 1e6)
        res.max_pipe_share = max(per_pipe) / max(1, sum(per_pipe))
        res.fair_share = 1 / len(per_pipe)
        res.ok = delivered >= res.trades
        if delivered > res.trades:
            res.extra = delivered - res.trades
    text = err_path.read_text(errors="replace")
    finals = [got[1] for ln in text.splitlines() if (got := read_line(ln)) and got[0] == "final"]
    if finals:
        res.tb = finals[-1]
    return res


def _first_error(log_path: Path) -> str:
    """': ' and the first error line the balancer logged (tb's "... ERROR: why"), or ''."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in lines:
        if " ERROR: " in line:
            return ": " + line.split(" ERROR: ", 1)[1].strip()
    return ""


def _wait_for(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _live_line(samples, total: int, rss_bytes: int) -> None:
    """One line, rewritten in place on a terminal: progress, the last 0.5 s's rate and CPU."""
    t, n, cpu = samples[-1]
    back = next((s for s in reversed(samples) if t - s[0] >= 0.5), samples[0])
    dt = t - back[0] or 1e-9
    rate = (n - back[1]) / dt
    busy = (cpu - back[2]) / dt * 100
    done = min(1.0, n / total) if total else 0.0
    bar = "#" * int(done * 20)
    per_m = (cpu - back[2]) / ((n - back[1]) / 1e6) if n > back[1] else 0.0
    end = "\r" if sys.stderr.isatty() else "\n"
    print(
        f"  [{bar:<20}] {n:>12,} / {total:,} trades   {rate:>12,.0f} trades/s   balancer CPU"
        f" {busy:5.1f}% ({per_m:.3f} s/M)   RSS {rss_bytes >> 20} MiB",
        end=end,
        file=sys.stderr,
        flush=True,
    )


def _latency(summary_path: Path, payloads: list[bytes], send_log: list) -> dict:
    import numpy as np

    summary = json.loads(summary_path.read_text())
    # message index of every q, and the time each message's slice went to the kernel
    msg_of_q: dict[int, int] = {}
    for k, payload in enumerate(payloads):
        for obj in json.loads(payload):
            msg_of_q[obj["q"]] = k
    sent = np.zeros(len(payloads), dtype=np.int64)
    for first, last, t, _ in send_log:
        sent[first : last + 1] = t
    stamps = [(q, t) for q, t in summary["stamps"] if q in msg_of_q]
    if not stamps:
        return {}
    # Warm-up excluded: until the worker's interpreter is up and reading, trades wait in the
    # pipes; that is start-up, not the steady-state latency measured here.
    warm = min(t for _, t in stamps) + 250_000_000
    lat = np.array(
        [t - sent[msg_of_q[q]] for q, t in stamps if sent[msg_of_q[q]] >= warm], dtype=np.float64
    )
    lat /= 1000.0
    if not len(lat):
        return {}
    return {
        "count": int(len(lat)),
        **{f"p{p:g}": float(np.percentile(lat, p)) for p in (50, 90, 99, 99.9)},
        "max": float(lat.max()),
    }


# -- reporting ------------------------------------------------------------------------------------
def format_result(r: ProfileResult) -> str:
    lines = [
        f"tb profile: {r.workload}, {r.trades:,} trades, {r.pipes} pipes, balancer {r.balancer}"
        f"{'' if r.balancer != 'tb' else f', loop {r.loop}'}, tls {r.tls}"
        f"{f', busy-poll {r.busy_poll_us} us' if r.busy_poll_us else ''}"
        f"{', sched-slice 0' if r.sched_slice_us == 0 else ''}"
        f"{'' if r.splice else ', no splice'}{'' if r.style == 'compact' else f', {r.style} JSON'}",
    ]
    if r.error:
        lines.append(f"  FAILED: {r.error}")
    lines += [
        f"  delivered           {r.delivered:,} records in {r.seconds:.3f} s"
        + (f" ({r.extra} more than the trades sent: statuses routed as trades)" if r.extra else ""),
        f"  trades/s            {r.trades_per_s:,.0f}",
        f"  balancer CPU        {r.cpu_s:.3f} s = {r.cpu_s_per_million:.3f} CPU s per million trades",
        f"  busiest pipe        {r.max_pipe_share * 100:.1f}% of trades"
        f" ({r.max_pipe_share / r.fair_share if r.fair_share else 0:.2f}x the fair share)"
        + (
            ""
            if r.plan_share is None
            else f"; the plan expects {r.plan_share * 100:.1f}%"
            f" ({r.plan_share / r.fair_share if r.fair_share else 0:.2f}x)"
        ),
        f"  balancer RSS        {r.median_rss_mib:.0f} MiB median while trades flow,"
        f" {r.max_rss_mib:.0f} MiB at most",
    ]
    if r.tb:
        lines += [
            f"  syscalls per trade  {r.tb.get('syscalls_per_trade', '?')}"
            f" ({r.tb.get('recvs', '?')} receives, {r.tb.get('pipe_writes', '?')} pipe writes)",
            f"  time per stage (s)  {r.tb.get('stage_s', '?')}",
            f"  tb's own view       {r.tb.get('cpu_s_per_million', '?')} CPU s per million over"
            f" {r.tb.get('stream_s', '?')} s of streaming; fallback-parsed {r.tb.get('fallback', '?')}",
        ]
    if r.latency_us:
        lat = r.latency_us
        lines.append(
            f"  {r.latency_kind} latency  "
            + "  ".join(f"{k} {v:,.0f} µs" for k, v in lat.items() if k != "count")
            + f"  ({lat['count']:,} trades)"
        )
        if r.send_times:
            lines.append(f"  sent at             {r.send_times}")
    return "\n".join(lines)


def _windowed(samples: list, window: float) -> tuple[list[float], list[float]]:
    """Delivered trades/s (millions) over `window`-second steps of the 10 ms samples."""
    ts, rate = [], []
    j = 0
    for i, (t, n, _) in enumerate(samples):
        while samples[j][0] < t - window:
            j += 1
        if i > j and (not ts or t - ts[-1] >= window / 2):
            ts.append(t)
            rate.append((n - samples[j][1]) / (t - samples[j][0]) / 1e6)
    return ts, rate


def _plot(results: list[ProfileResult], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("tb profile: --plot needs matplotlib: pip install 'tb[plot]'") from None
    has_lat = any(r.latency_us for r in results)
    fig, axes = plt.subplots(
        1, 2 if has_lat else 1, figsize=(12 if has_lat else 7, 4), squeeze=False
    )
    ax = axes[0][0]
    for r in results:
        ts, rate = _windowed(r.samples, 0.1)
        ax.plot(ts, rate, label=f"{r.balancer} ({r.cpu_s_per_million:.3f} CPU s/M)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("million trades/s delivered")
    ax.set_title(f"{results[0].workload}: throughput")
    ax.legend()
    if has_lat:
        ax = axes[0][1]
        for r in results:
            if r.latency_us:
                keys = [k for k in r.latency_us if k.startswith("p")]
                ax.plot(keys, [r.latency_us[k] for k in keys], marker="o", label=r.balancer)
        ax.set_ylabel(f"{results[0].latency_kind} latency, µs")
        ax.set_title("latency percentiles")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(args: argparse.Namespace) -> int:
    if args.balancer is not None:
        try:
            words = shlex.split(args.balancer)
        except ValueError as exc:
            raise CLIError(f"--balancer {args.balancer!r}: {exc}") from None
        if not words:
            raise CLIError("--balancer needs a command")
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        raise CLIError(f"--plot {args.plot}: no such directory")
    if args.balancer:
        given = [flag for k, (flag, default) in args.tb_only.items() if getattr(args, k) != default]
        if given:
            flags = ", ".join(given)
            verb = "applies" if len(given) == 1 else "apply"
            raise CLIError(f"{flags} {verb} to tb only, not to a --balancer command")
    plan_share = None
    if args.plan:
        from tb.cli import read_plan

        plan_share = read_plan(args.plan, args.pipes, args.hash).expected_share
    results = []
    for _ in range(max(1, args.runs)):
        r = run_profile(args, live=not args.json)
        r.plan_share = plan_share
        results.append(r)
        if not args.json:
            print(format_result(r), flush=True)
    if args.json:
        out = [asdict(r) for r in results]
        for r in out:
            r.pop("samples")
        print(json.dumps(out if len(out) > 1 else out[0], indent=2))
    if args.plot:
        try:
            _plot(results, args.plot)
        except OSError as exc:
            raise CLIError(f"cannot write --plot {args.plot}: {exc.strerror or exc}") from None
        if not args.json:
            print(f"tb profile: plot written to {args.plot}")
    return ExitCode.OK if all(r.ok for r in results) else ExitCode.ERROR

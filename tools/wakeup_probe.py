"""What one wake-up of a running tb costs, in place: `tb lb` with probes, for `tb profile --balancer`.

    tb profile --workload trickle --balancer "python3 tools/wakeup_probe.py --timing"
    tb profile --workload trickle --trades 24000 \\
        --balancer "python3 tools/wakeup_probe.py --opcodes --wakes 2000:4000"

Then KEY URL NPIPES WORKDIR WORKER... as `tb lb` takes them (tb profile appends those).

--timing: every call of the hot path's steps (tb.ingest) is timed (perf_counter_ns around it;
the receive handler also in thread CPU time), and the report gives each step's median and p90
over the last two thirds of the run: the receive handler (Ingest.on_readable), the receive
syscall, text_frames, the small lane (Router.small_runs), the pipe writes (each os.write), and
the layers between. A step this tb no longer has is an error: the probe names are updated with
the hot path. The probes add ~0.1 µs per call.
--opcodes: the bytecodes each function executes over the wake-ups A..B of the event loop, per
wake-up and per trade (sys.settrace with opcode events: slow while tracing, so a trickle's
receives grow; compare two versions in the same run, alternating). Deterministic where timing
is not, but a bytecode's cost with cold caches varies by far more than its count.

The report goes to --out (default: wakeup-probe.<pid>.txt in the current directory) when tb exits.
"""

from __future__ import annotations

import collections
import os
import sys
import time

USAGE = (
    "usage: wakeup_probe.py (--timing | --opcodes [--wakes A:B]) [--out FILE] "
    "KEY URL NPIPES WORKDIR WORKER..."
)


def parse(argv: list[str]) -> tuple[str, tuple[int, int], str, list[str]]:
    """(mode, wake window, report path, tb lb's arguments), or exit 2 with the usage line."""
    mode, wakes, out = "", (2000, 4000), f"wakeup-probe.{os.getpid()}.txt"
    args = list(argv)
    try:
        while args and args[0].startswith("--"):
            flag = args.pop(0)
            if flag in ("--timing", "--opcodes"):
                mode = flag[2:]
            elif flag == "--wakes":
                a, b = args.pop(0).split(":")
                wakes = (int(a), int(b))
                if not 0 <= wakes[0] < wakes[1]:
                    raise ValueError
            elif flag == "--out":
                out = args.pop(0)
            else:
                raise ValueError
    except (IndexError, ValueError):
        args = []
    if not mode or len(args) < 5:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    return mode, wakes, out, args


def quantiles(xs: list[int]) -> str:
    x = sorted(xs[len(xs) // 3 :])  # (the first third: start-up, the symbol cache filling)
    if not x:
        return "no calls"
    at = lambda q: x[min(len(x) - 1, int(q * len(x)))] / 1000  # noqa: E731
    return f"{len(x):8d} calls  p50 {at(0.5):7.1f} µs  p90 {at(0.9):7.1f} µs"


def check_names(probed: list[tuple[object, str]]) -> None:
    """Exit with an error naming each probed step this tb does not have (before any probe is
    installed): the probes follow the hot path's names, and a silent gap would mislead."""
    gone = [f"{getattr(o, '__name__', o)}.{n}" for o, n in probed if not hasattr(o, n)]
    if gone:
        sys.exit(f"wakeup_probe.py: {', '.join(gone)} gone from tb: update the probe")


def probe_timing(out: str) -> None:
    import atexit

    import tb.ingest as ingest
    import tb.pipes.writer as writer
    import tb.route as route
    import tb.transport as transport

    ns, cpu = time.perf_counter_ns, time.thread_time_ns
    times: dict[str, list[int]] = {}

    steps = [  # (owner, name): each is timed as `name`
        (ingest, "text_frames"),
        (ingest.Ingest, "_route_small"),
        (route.Router, "small_runs"),
        (ingest.Ingest, "_write"),
        (writer.PipeWriter, "submit_small"),
        (os, "write"),  # (submit_small takes os.write at each call)
    ]
    check_names([(ingest.Ingest, "on_readable"), *steps])

    def timed(owner, name: str, label: str) -> None:
        f = getattr(owner, name)
        xs = times.setdefault(label, [])

        def probe(*args):
            t = ns()
            r = f(*args)
            xs.append(ns() - t)
            return r

        setattr(owner, name, probe)

    on_readable = ingest.Ingest.on_readable
    wall, spent = times.setdefault("on_readable", []), times.setdefault("on_readable (CPU)", [])

    def on_readable_probe(self) -> None:
        c, t = cpu(), ns()
        on_readable(self)
        wall.append(ns() - t)
        spent.append(cpu() - c)

    ingest.Ingest.on_readable = on_readable_probe
    for cls in vars(transport).values():
        if isinstance(cls, type) and "recv_into" in vars(cls):
            timed(cls, "recv_into", "recv_into")
    for owner, name in steps:
        timed(owner, name, "os.write" if owner is os else name)

    def report() -> None:
        with open(out, "w") as f:
            f.write("in place, per call (tools/wakeup_probe.py --timing)\n")
            for label, xs in times.items():
                f.write(f"{label:20s} {quantiles(xs)}\n")

    atexit.register(report)


def probe_opcodes(out: str, wakes: tuple[int, int]) -> None:
    from tb.loop.epoll import EpollLoop
    from tb.route import Router

    first, last = wakes
    counts: collections.Counter[str] = collections.Counter()
    seen = {"wakes": 0, "trades": 0, "frames": 0}

    def local(frame, event, arg):
        if event == "opcode":
            counts[frame.f_code.co_qualname] += 1
        return local

    def new_frame(frame, event, arg):
        frame.f_trace_opcodes = True
        return local

    def trace_callers(on: bool) -> None:
        f = sys._getframe(2)  # (the loop's frames above the probe)
        while f is not None:
            f.f_trace_opcodes = on
            f.f_trace = local if on else None
            f = f.f_back

    poll = EpollLoop.poll

    def poll_probe(self, timeout):
        got = poll(self, timeout)
        if got:
            seen["wakes"] += 1
            if seen["wakes"] == first:
                trace_callers(True)
                sys.settrace(new_frame)
            elif seen["wakes"] == last:
                sys.settrace(None)
                trace_callers(False)
                report()
        return got

    check_names([(EpollLoop, "poll"), (Router, "small_runs")])
    small_runs = Router.small_runs

    def small_runs_probe(router, payloads):
        got = small_runs(router, payloads)
        if got is not None and first <= seen["wakes"] < last:
            seen["trades"] += got[3]
            seen["frames"] += len(payloads)
        return got

    probes = ("poll_probe", "small_runs_probe", "trace_callers")

    def report() -> None:
        n = last - first
        total = sum(v for k, v in counts.items() if k.rsplit(".", 1)[-1] not in probes)
        trades = max(1, seen["trades"])
        with open(out, "w") as f:
            f.write(
                f"wake-ups {first}..{last}: {total / n:.1f} bytecodes per wake-up, "
                f"{trades / n:.2f} trades and {seen['frames'] / n:.2f} frames per wake-up, "
                f"{total / trades:.1f} bytecodes per trade\n"
            )
            for name, v in counts.most_common(40):
                if name.rsplit(".", 1)[-1] not in probes:
                    f.write(f"{v / n:9.1f}  {name}\n")

    EpollLoop.poll = poll_probe
    Router.small_runs = small_runs_probe


def main(argv: list[str]) -> int:
    mode, wakes, out, lb_args = parse(argv)
    if mode == "timing":
        probe_timing(out)
    else:
        probe_opcodes(out, wakes)
    from tb.cli import main as tb_main

    return tb_main(["lb", *lb_args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

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
--time MODULE:NAME (repeatable, with --timing) times one more function, e.g. tb.ws.scan:scan_frames.

The names probed are the tables TIMED and OPCODE_HOOKS below. Each is looked up before tb
starts: a name that is gone, or that is no longer the plain function of that name (a wrapper,
such as a tracing hook inside tb), stops the tool with one line naming it and exit code 3, never
a report with a step silently missing. When tb renames a step, update the tables.
"""

from __future__ import annotations

import collections
import importlib
import inspect
import os
import sys
import time

#: --timing: (module, name in it, label in the report, also in thread CPU time). Module-level
#: names are replaced in the module that calls them (tb.ingest's own globals).
TIMED = [
    ("tb.ingest", "Ingest.on_readable", "on_readable", True),
    ("tb.transport.base", "Transport.recv_into", "recv_into", False),
    ("tb.transport.ktls", "KTLSTransport.recv_into", "recv_into", False),
    ("tb.ingest", "text_frames", "text_frames", False),
    ("tb.ingest", "Ingest._route_small", "_route_small", False),
    ("tb.route", "Router.small_runs", "small_runs", False),
    ("tb.ingest", "Ingest._write", "_write", False),
    ("tb.pipes.writer", "PipeWriter.submit_small", "submit_small", False),
    ("os", "write", "os.write", False),  # (submit_small takes os.write at each call)
]
#: --opcodes: the loop's poll counts the wake-ups; the small router counts their trades.
OPCODE_HOOKS = {
    "poll": ("tb.loop.epoll", "EpollLoop.poll"),
    "small_runs": ("tb.route", "Router.small_runs"),
}

USAGE = (
    "usage: wakeup_probe.py (--timing [--time MODULE:NAME]... | --opcodes [--wakes A:B]) "
    "[--out FILE] KEY URL NPIPES WORKDIR WORKER..."
)


class ProbeError(Exception):
    """A name to probe is gone or is not the function it names."""


def resolve(module: str, name: str) -> tuple[object, str, object]:
    """(owner, attribute, function) for `name` ("func" or "Class.method") in `module`.

    Raises:
        ProbeError: the module, class or function is gone, or `name` is not a plain function
        of that name (a wrapper: probing it would time or trace the wrong thing).
    """
    where = f"{module}.{name}"
    try:
        owner: object = importlib.import_module(module)
    except ImportError as exc:
        raise ProbeError(f"{where}: cannot import {module} ({exc})") from None
    *path, attr = name.split(".")
    for part in path:
        owner = getattr(owner, part, None)
        if owner is None:
            raise ProbeError(f"{where} is gone: {module} has no {part}")
    f = getattr(owner, attr, None)
    if f is None:
        raise ProbeError(f"{where} is gone")
    if not (inspect.isfunction(f) or inspect.isbuiltin(f)):
        raise ProbeError(f"{where} is not a function but {type(f).__name__}")
    if getattr(f, "__wrapped__", None) is not None or f.__name__ != attr:
        raise ProbeError(f"{where} is a wrapper ({f.__qualname__}), not the step itself")
    return owner, attr, f


def parse(argv: list[str]) -> tuple[str, tuple[int, int], str, list, list[str]]:
    """(mode, wake window, report path, extra TIMED rows, tb lb's arguments), or exit 2 with the
    usage line."""
    mode, wakes, out = "", (2000, 4000), f"wakeup-probe.{os.getpid()}.txt"
    extra: list[tuple[str, str, str, bool]] = []
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
            elif flag == "--time":
                module, name = args.pop(0).split(":")
                if not module or not name:
                    raise ValueError
                extra.append((module, name, name.rsplit(".", 1)[-1], False))
            else:
                raise ValueError
    except (IndexError, ValueError):
        args = []
    if not mode or len(args) < 5 or (extra and mode != "timing"):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    return mode, wakes, out, extra, args


def quantiles(xs: list[int]) -> str:
    x = sorted(xs[len(xs) // 3 :])  # (the first third: start-up, the symbol cache filling)
    if not x:
        return "no calls"
    at = lambda q: x[min(len(x) - 1, int(q * len(x)))] / 1000  # noqa: E731
    return f"{len(x):8d} calls  p50 {at(0.5):7.1f} µs  p90 {at(0.9):7.1f} µs"


def probe_timing(out: str, table: list[tuple[str, str, str, bool]]) -> None:
    """Wrap every function of `table` with a timer; the report is written when tb exits.

    Raises:
        ProbeError: a name in the table (see resolve), before anything is wrapped.
    """
    import atexit

    ns, cpu = time.perf_counter_ns, time.thread_time_ns
    times: dict[str, list[int]] = {}
    targets = [(resolve(module, name), label, with_cpu) for module, name, label, with_cpu in table]

    def timed(owner: object, attr: str, f, label: str) -> None:
        xs = times.setdefault(label, [])

        def probe(*args):
            t = ns()
            r = f(*args)
            xs.append(ns() - t)
            return r

        setattr(owner, attr, probe)

    def timed_with_cpu(owner: object, attr: str, f, label: str) -> None:
        wall, spent = times.setdefault(label, []), times.setdefault(f"{label} (CPU)", [])

        def probe(*args):
            c, t = cpu(), ns()
            r = f(*args)
            wall.append(ns() - t)
            spent.append(cpu() - c)
            return r

        setattr(owner, attr, probe)

    for (owner, attr, f), label, with_cpu in targets:
        (timed_with_cpu if with_cpu else timed)(owner, attr, f, label)

    def report() -> None:
        with open(out, "w") as f:
            f.write("in place, per call (tools/wakeup_probe.py --timing)\n")
            for label, xs in times.items():
                f.write(f"{label:20s} {quantiles(xs)}\n")

    atexit.register(report)


def probe_opcodes(out: str, wakes: tuple[int, int]) -> None:
    """Count the bytecodes of the wake-ups `wakes` (A..B) of the event loop.

    Raises:
        ProbeError: a name in OPCODE_HOOKS (see resolve), before anything is hooked.
    """
    loop_cls, poll_attr, poll = resolve(*OPCODE_HOOKS["poll"])
    router, runs_attr, small_runs = resolve(*OPCODE_HOOKS["small_runs"])
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

    def small_runs_probe(*args):
        got = small_runs(*args)
        if got is not None and first <= seen["wakes"] < last:
            seen["trades"] += got[3]
            seen["frames"] += len(args[-1])  # (the payloads; args[0] is the Router)
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

    setattr(loop_cls, poll_attr, poll_probe)
    setattr(router, runs_attr, small_runs_probe)


def main(argv: list[str]) -> int:
    mode, wakes, out, extra, lb_args = parse(argv)
    try:
        if mode == "timing":
            probe_timing(out, TIMED + extra)
        else:
            probe_opcodes(out, wakes)
    except ProbeError as exc:
        print(
            f"wakeup_probe.py: {exc}; nothing was probed (update the tables at the top of "
            "tools/wakeup_probe.py)",
            file=sys.stderr,
        )
        return 3
    from tb.cli import main as tb_main

    return tb_main(["lb", *lb_args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

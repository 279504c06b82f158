"""The `tb` command line: one subcommand per job, one clear line per error, documented exit codes."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

from tb import __version__
from tb.exitcode import ExitCode, help_text
from tb.logs import setup_logging, write_line
from tb.sched import DEFAULT_SLICE_US, MAX_SLICE_US, MIN_SLICE_US

__all__ = ["main", "parse_size", "positive_int", "positive_float", "seconds", "count", "CLIError"]


class CLIError(Exception):
    """A bad command line: printed as one line, exit code 2."""


EXIT_HELP = help_text()


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line saying what to fix (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_size(text: str) -> int:
    """'1G' / '512M' / '64K' / '1000' -> bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = units.get(t[-1:], 1)
    if t[-1:] in units:
        t = t[:-1]
    try:
        value = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64K, 512M, 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def _whole(text: str, least: int, what: str, bound: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number{what}: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {bound}: {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (underscores allowed: 1_000_000)."""
    return _whole(text, 1, "", "at least 1")


def microseconds(text: str) -> int:
    """An argparse type: a whole number of microseconds >= 0 (underscores allowed)."""
    return _whole(text, 0, " of microseconds", "0 or more")


def slice_microseconds(text: str) -> int:
    """An argparse type: 0, or a time slice the kernel takes (100 to 100,000 microseconds)."""
    value = _whole(text, 0, " of microseconds", "0 or more")
    if value and not MIN_SLICE_US <= value <= MAX_SLICE_US:
        raise argparse.ArgumentTypeError(
            f"must be 0 (the kernel's default) or {MIN_SLICE_US} to {MAX_SLICE_US:,}: {text!r}"
        )
    return value


def _number(text: str, what: str) -> float:
    try:
        return float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number{what}: {text!r}") from None


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0 (0 turns some options off)."""
    value = _number(text, " of seconds")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text!r}")
    return value


def count(text: str) -> int:
    """An argparse type: a whole number >= 0 (underscores allowed)."""
    return _whole(text, 0, "", "0 or more")


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    value = _number(text, "")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """-v/--verbose, -q/--quiet and --log-format, read by the CLI's logging set-up."""
    g = parser.add_argument_group("logging")
    g.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-vv: debug lines too (INFO is the default)",
    )
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    g.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text (default) or json: one JSON object per line (time, level, logger, event and"
        " the stats lines' fields), for log shippers",
    )


def listen_address(text: str) -> tuple[str, int]:
    """An argparse type: HOST:PORT ([::1]:PORT for IPv6)."""
    from tb.metrics import parse_listen

    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_run_arguments(p: argparse.ArgumentParser, *, positional: bool = True) -> None:
    if positional:
        p.add_argument("url", help="feed URL, ws://HOST[:PORT]/PATH or wss://...")
        p.add_argument(
            "--pipes", "-n", type=positive_int, required=True, help="number of pipes to the worker"
        )
        p.add_argument("--key", help="API key (else $POLYGON_API_KEY, else $MASSIVE_API_KEY)")
        p.add_argument("--key-file", help="read the API key from this file (keeps it off argv)")
        p.add_argument("--workdir", default=".", help="the worker's working directory (default: .)")
    p.add_argument(
        "--subscribe", default="T.*", help="topics to subscribe, comma separated (default: T.*)"
    )
    p.add_argument(
        "--hash",
        choices=["mixed", "compat"],
        default="mixed",
        help="symbol->pipe mapping: mixed (default, well spread) or compat "
        "(the C original's (FNV-1a-64 >> 32) %% N, exactly)",
    )
    p.add_argument(
        "--plan",
        metavar="FILE",
        help="planned pipes (made by tb plan, for as many pipes and the same --hash): its"
        " symbols go to their planned pipes, every other symbol by the hash",
    )
    p.add_argument(
        "--stats", type=seconds, default=0.0, metavar="SECONDS", help="print counters every SECONDS"
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="exit when the connection ends instead of reconnecting (tests, demos, replays)",
    )
    p.add_argument(
        "--gap-records",
        action="store_true",
        help='when streaming resumes after a reconnect, write {"ev":"tb.gap","from":MS,"to":MS,'
        '"reason":"..."} to every pipe before the new connection\'s first event: the window the'
        " worker did not see (off by default: the C original's contract has only feed events)",
    )
    p.add_argument(
        "--metrics",
        type=listen_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics and a health check on"
        " /healthz (200 while connected, subscribed and the worker alive, else 503 and why);"
        " needs pip install 'tb[metrics]'",
    )
    p.add_argument(
        "--max-buffer",
        type=parse_size,
        default=1 << 30,
        help="bound on bytes queued for the pipes; past it tb stops reading the socket (default 1G)",
    )
    p.add_argument(
        "--on-overflow",
        choices=["block", "exit", "spill"],
        default="block",
        help="when the bound has held for --overflow-timeout: block (keep the socket paused, warn;"
        " the default) or exit (code 7); spill: never pause at the bound, append each pipe's"
        " overflow to a spool file in --spill-dir and feed it to the pipe, in order, as the worker"
        " catches up; past --max-spill (or if the disk fails) keep the rest in memory up to the"
        " bound, then --on-spill-full",
    )
    p.add_argument(
        "--spill-dir",
        metavar="DIR",
        help="with --on-overflow spill: where the spool files go, one per pipe (default: --workdir)."
        " Removed at exit; a stale one a crashed run left is removed at start, and said",
    )
    p.add_argument(
        "--max-spill",
        type=parse_size,
        default=8 << 30,
        metavar="SIZE",
        help="with --on-overflow spill: bound on bytes in all spools together (default 8G)",
    )
    p.add_argument(
        "--on-spill-full",
        choices=["block", "exit"],
        default="block",
        help="with --on-overflow spill, once the spool cannot take more and the memory bound has"
        " held for --overflow-timeout: block (the socket stays paused, warn; the default) or exit"
        " (code 7)",
    )
    p.add_argument(
        "--overflow-timeout",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long the bound may hold before --on-overflow applies (default 30)",
    )
    p.add_argument(
        "--max-message",
        type=parse_size,
        default=16 << 20,
        help="largest websocket message accepted (default 16M); bigger closes with 1009",
    )
    p.add_argument(
        "--pipe-size",
        type=parse_size,
        default=None,
        help="pipe buffer size to ask for (default: /proc/sys/fs/pipe-max-size)",
    )
    p.add_argument(
        "--no-splice",
        dest="splice",
        action="store_false",
        help="copy every record into the pipes; by default a big batch's runs are spliced"
        " (vmsplice: the pipe takes references to tb's pages, ~60%% less write cost) from a pool"
        " of a few output buffers, each reused only once its readers have read all of it",
    )
    p.add_argument(
        "--loop",
        choices=["auto", "epoll", "uring"],
        default="auto",
        help="event loop: auto (= epoll; uring measured level with it), epoll, or uring "
        "(io_uring readiness; needs pip install 'tb[uring]')",
    )
    p.add_argument(
        "--busy-poll",
        type=microseconds,
        default=0,
        metavar="USEC",
        help="after each event keep polling for up to USEC microseconds before sleeping in the"
        " kernel (default 0: sleep at once). Spinning keeps caches warm and skips the wake-up:"
        " lower latency on a quiet feed, for a core's worth of CPU while messages come closer"
        " together than USEC",
    )
    p.add_argument(
        "--sched-slice",
        type=slice_microseconds,
        default=DEFAULT_SLICE_US,
        metavar="USEC",
        help="CPU time slice to ask the kernel for (Linux 6.12+, no privileges; default"
        f" {DEFAULT_SLICE_US}, the least it allows; 0: the kernel's default, 0.7-3 ms). A short"
        " slice lets tb's wake-up preempt whatever else runs on its core at once instead of"
        " waiting for it: lower latency when other processes (the worker's among them) share"
        " tb's cores; tb's share of the CPU is unchanged",
    )
    p.add_argument(
        "--cafile", help="CA bundle to verify the server with (default: the system store)"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the TLS certificate (test servers only)",
    )
    p.add_argument(
        "--ping-interval",
        type=seconds,
        default=20.0,
        metavar="SECONDS",
        help="send a websocket ping this often (default 20; 0 = never)",
    )
    p.add_argument(
        "--idle-timeout",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="reconnect when nothing at all arrives for this long (default 60; 0 = never)",
    )
    p.add_argument(
        "--tls",
        choices=["auto", "ktls", "userspace"],
        default="auto",
        help="TLS for wss://: kernel TLS when the kernel and cipher allow, else userspace (auto, "
        "the default; one log line says which and why), or force one (ktls fails if unavailable)",
    )
    add_supervision_arguments(p)


def add_supervision_arguments(p: argparse.ArgumentParser) -> None:
    """The worker's supervision (tb.supervisor), for every command that runs a worker."""
    p.add_argument(
        "--restart",
        choices=["always", "on-failure", "never"],
        default="on-failure",
        help="restart the worker when it dies: always, on-failure (default: a non-zero exit or a "
        "signal; a clean exit ends tb with code 4), never. Records keep queueing while it is down",
    )
    p.add_argument(
        "--max-restarts",
        type=positive_int,
        default=10,
        help="give up (exit 4) after this many restarts within 60 s (default 10)",
    )
    p.add_argument(
        "--stall-warning",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="warn when a pipe has records queued and its reader has taken nothing for this"
        " long (default 10; 0: never)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=seconds,
        default=10.0,
        help="seconds to flush the pipes and wait for the worker at exit (default 10)",
    )


def _resolve_key(args: argparse.Namespace) -> tuple[str, str]:
    if getattr(args, "key", None):
        return args.key, "--key"
    if getattr(args, "key_file", None):
        try:
            with open(args.key_file, encoding="utf-8") as f:
                key = f.read().strip()
        except OSError as exc:
            raise CLIError(f"cannot read --key-file {args.key_file}: {exc.strerror}") from None
        if not key:
            raise CLIError(f"--key-file {args.key_file} is empty")
        return key, f"--key-file {args.key_file}"
    for var in ("POLYGON_API_KEY", "MASSIVE_API_KEY"):
        if os.environ.get(var):
            return os.environ[var], var
    raise CLIError(
        "no API key: pass --key or --key-file, or set POLYGON_API_KEY or MASSIVE_API_KEY"
    )


def check_cafile(path: str | None) -> None:
    """A --cafile that cannot be loaded is a usage error, found before anything starts."""
    if path is None:
        return
    import ssl

    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:  # (an OSError too)
        raise CLIError(f"--cafile {path} holds no usable certificate ({exc.reason})") from None
    except OSError as exc:
        raise CLIError(f"cannot read --cafile {path}: {exc.strerror or exc}") from None


def read_plan(path: str, pipes: int, hash: str):
    """The plan in `path`, for `pipes` pipes and `hash`; a CLIError saying what is wrong."""
    from tb.route import PlanError, load_plan

    try:
        plan = load_plan(path)
    except PlanError as exc:
        raise CLIError(f"--plan: {exc}") from None
    if plan.pipes != pipes:
        raise CLIError(
            f"--plan {path} is for {plan.pipes} pipes, not --pipes {pipes}:"
            f" make it again with tb plan --pipes {pipes}"
        )
    if plan.hash != hash:
        raise CLIError(
            f"--plan {path} sends unplanned symbols by --hash {plan.hash}, not --hash {hash}"
        )
    return plan


def _run_config(args: argparse.Namespace, worker: list[str]):
    from tb.balancer import RunConfig
    from tb.transport import parse_url

    try:
        url = parse_url(args.url)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if not worker:
        raise CLIError("no worker: give it after --, e.g. tb run URL --pipes 4 -- ./worker ARGS")
    if not os.path.isdir(args.workdir):
        raise CLIError(f"--workdir {args.workdir} is not a directory")
    check_cafile(args.cafile)
    spill_dir = getattr(args, "spill_dir", None)
    if args.on_overflow == "spill":
        from tb.pipes.spool import SpoolError, check_dir

        try:
            check_dir(spill_dir or args.workdir, "--spill-dir" if spill_dir else "--workdir")
        except SpoolError as exc:
            raise CLIError(f"{exc} (--on-overflow spill writes its spool files there)") from None
    elif spill_dir is not None:
        raise CLIError("--spill-dir needs --on-overflow spill")
    key, source = _resolve_key(args)
    plan = read_plan(args.plan, args.pipes, args.hash) if args.plan else None
    return RunConfig(
        url=url,
        pipes=args.pipes,
        worker=worker,
        key=key,
        key_source=source,
        subscribe=args.subscribe,
        workdir=args.workdir,
        hash=args.hash,
        stats=args.stats,
        once=args.once,
        max_buffer=args.max_buffer,
        max_message=args.max_message,
        loop=args.loop,
        busy_poll=args.busy_poll / 1e6,
        sched_slice_us=args.sched_slice,
        splice=args.splice,
        pipe_size=args.pipe_size,
        tls=getattr(args, "force_tls", None),
        tls_mode=args.tls,
        cafile=args.cafile,
        insecure=args.insecure,
        shutdown_timeout=args.shutdown_timeout,
        restart=args.restart,
        on_overflow=args.on_overflow,
        overflow_timeout=args.overflow_timeout,
        spill_dir=spill_dir,
        max_spill=args.max_spill,
        on_spill_full=args.on_spill_full,
        stall_warning=args.stall_warning,
        ping_interval=args.ping_interval,
        idle_timeout=args.idle_timeout,
        max_restarts=args.max_restarts,
        metrics=args.metrics,
        gap_records=args.gap_records,
        plan=plan,
    )


def _balancer(cfg):
    from tb.balancer import Balancer
    from tb.loop import LoopError

    try:
        return Balancer(cfg)
    except LoopError as exc:
        raise CLIError(str(exc)) from None


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _run_config(args, args.worker)
    return _balancer(cfg).run()


def cmd_lb(args: argparse.Namespace) -> int:
    from tb.transport import parse_url

    args.pipes = args.npipes
    args.url = args.address
    args.key_file = None
    cfg = _run_config(args, args.worker)
    # The original speaks TLS exactly when the port is 443, whatever the scheme says.
    cfg.tls = parse_url(args.address).port == 443
    return _balancer(cfg).run()


def build_parser() -> argparse.ArgumentParser:
    top = Parser(
        prog="tb",
        description="tb, the trade balancer: spreads a Polygon/Massive websocket feed by symbol "
        "over N pipes to a worker process.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"tb {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    run = sub.add_parser(
        "run",
        help="ingest a feed and spread it over pipes to a worker",
        usage="tb run URL --pipes N [options] -- WORKER [ARGS...]",
        description="Connect to URL, authenticate, subscribe, and write every event to pipe "
        "hash(symbol) % N as [u32 LE length][JSON]. The worker is started as "
        "WORKER ARGS... FD0 ... FDn-1 with TB_PIPE_FDS=FD0,...,FDn-1 in its environment, in "
        "--workdir; it gets SIGHUP if tb dies. Reconnects with backoff unless --once.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(run)
    add_logging_arguments(run)
    run.set_defaults(func=cmd_run)

    lb = sub.add_parser(
        "lb",
        help="the C original's positional command line: KEY URL NPIPES WORKDIR WORKER [ARGS...]",
        usage="tb lb KEY URL NPIPES WORKDIR WORKER [ARGS...]",
        description="Drop-in for mattsta/trade-balancer's lb: same arguments, same pipes, same "
        "worker contract (TLS when the port is 443). Use --hash compat for the original's "
        "exact symbol->pipe mapping.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lb.add_argument("key", help="API key")
    lb.add_argument("address", help="feed URL")
    lb.add_argument("npipes", type=positive_int, help="number of pipes")
    lb.add_argument("workdir", help="the worker's working directory")
    lb.add_argument("worker", nargs=argparse.REMAINDER, help="worker program and its arguments")
    add_run_arguments(lb, positional=False)
    add_logging_arguments(lb)
    lb.set_defaults(func=cmd_lb)

    for name in (
        "gen",
        "replay",
        "record",
        "demo",
        "profile",
        "check",
        "plan",
        "publish",
        "consume",
    ):
        module = __import__(f"tb.{name}", fromlist=["add_parser"])
        module.add_parser(sub)
    top.commands = sub.choices  # (main: a command's unrecognized arguments, said by it)
    return top


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.INFO
    if getattr(args, "quiet", False):
        level = logging.WARNING
    elif getattr(args, "verbose", 0) >= 2:
        level = logging.DEBUG
    setup_logging(level, getattr(args, "log_format", "text"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    worker: list[str] = []
    if argv[:1] == ["run"] and "--" in argv:
        cut = argv.index("--")
        argv, worker = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        where = parser.commands.get(args.command, parser) if args.command else parser
        where.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "run":
        args.worker = worker
    if args.command == "lb" and args.worker[:1] == ["--"]:
        args.worker = args.worker[1:]
    _setup_logging(args)
    try:
        return args.func(args)
    except CLIError as exc:
        write_line(f"tb {args.command}: error: {exc}")
        return ExitCode.USAGE
    except KeyboardInterrupt:
        write_line(f"tb {args.command}: interrupted")
        return ExitCode.INTERRUPTED

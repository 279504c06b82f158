"""`tb plan`: symbols assigned to pipes by a day's load, for `tb run --plan`.

Theory of operation. A hash spreads symbols at random, so on a Zipf-like feed some pipe carries
well over its fair share, and the worker process reading it sets the pace for the whole worker.
Trading volume per symbol is stable from one day to the next, so the assignment can be made in
advance: `tb plan` weighs each symbol over one or more captures (`tb record` / `tb gen` files) by
its trades, or by its record bytes (`--by bytes`), and assigns symbols heaviest first, each to
the pipe with the least load so far (longest processing time first). When a symbol is placed
its pipe is the least loaded, so at or under the fair share: the busiest pipe ends at most its
lightest symbol's weight above the fair share, which is why a feed whose biggest symbol is under
the fair share plans close to it. The plan names the hash for the symbols it does not know (a new listing), which `tb run`
then uses for them (tb.route.plan has the file format and the lookup).

Each event's symbol is found as the router finds it: feed-shaped messages by the small lane's
expression (tb.route.small.feed_objects), anything else by the general router's decoding
(tb.route.slow), so the plan's symbols are the bytes tb run routes by.
"""

from __future__ import annotations

import argparse
import heapq
import os
import sys
from collections.abc import Iterable

from tb.capture import CaptureError, read_capture
from tb.cli import CLIError, positive_int
from tb.route import Plan, PlanError
from tb.route.hashing import HASHES
from tb.route.slow import route_slowly
from tb.route.small import feed_objects

__all__ = ["add_parser", "assign", "main", "make_plan", "weigh"]

_CHUNK = 256  # messages weighed per expression call


def weigh(payloads: Iterable[bytes], by: str = "trades", weights: dict | None = None) -> dict:
    """Each symbol's load in `payloads` (whole messages): its trades, or its records' bytes
    (`by` "bytes": each object's length plus its 4-byte header), added to `weights`."""
    weights = {} if weights is None else weights
    chunk: list[bytes] = []
    for payload in payloads:
        chunk.append(bytes(payload))
        if len(chunk) == _CHUNK:
            _weigh_chunk(chunk, by, weights)
            chunk = []
    if chunk:
        _weigh_chunk(chunk, by, weights)
    return weights


def _weigh_chunk(chunk: list[bytes], by: str, weights: dict) -> None:
    found = feed_objects(b"\n".join(chunk))
    if found is None:  # something in it is not feed-shaped: message by message
        for message in chunk:
            _weigh_message(message, by, weights)
        return
    _add(found, by, weights)


def _weigh_message(message: bytes, by: str, weights: dict) -> None:
    found = feed_objects(message)
    if found is not None:
        _add(found, by, weights)
        return
    names: list[bytes] = []

    def name_of(sym: bytes) -> int:  # (records name their symbol by its index in names)
        names.append(sym)
        return len(names) - 1

    for start, end, index in route_slowly(message, name_of).records:
        sym = names[index]
        weights[sym] = weights.get(sym, 0) + (1 if by == "trades" else end - start + 4)


def _add(found: list, by: str, weights: dict) -> None:
    get = weights.get
    if by == "trades":
        for _, sym in found:
            weights[sym] = get(sym, 0) + 1
    else:
        for obj, sym in found:
            weights[sym] = get(sym, 0) + len(obj) + 4


def assign(weights: dict[bytes, int], npipes: int) -> tuple[dict[bytes, int], list[int]]:
    """Symbols to pipes, heaviest first, each to the least loaded pipe (ties: the lowest
    pipe; symbols of equal weight in byte order, so the same load gives the same plan):
    (symbol -> pipe, each pipe's load)."""
    loads = [0] * npipes
    heap = [(0, pipe) for pipe in range(npipes)]
    plan: dict[bytes, int] = {}
    for sym, weight in sorted(weights.items(), key=lambda item: (-item[1], item[0])):
        load, pipe = heapq.heappop(heap)
        plan[sym] = pipe
        loads[pipe] = load + weight
        heapq.heappush(heap, (load + weight, pipe))
    return plan, loads


def make_plan(weights: dict[bytes, int], npipes: int, hash: str = "mixed", by: str = "trades"):
    """(the Plan for this load, each pipe's load under it, each pipe's load by the hash alone)."""
    symbols, loads = assign(weights, npipes)
    total = sum(loads)
    share = max(loads) / total if total else 0.0
    hashed = [0] * npipes
    pick = HASHES[hash]
    for sym, weight in weights.items():
        hashed[pick(sym, npipes)] += weight
    return Plan(npipes, hash, symbols, by, share), loads, hashed


def add_parser(subparsers) -> None:
    """Register `tb plan` on a subparsers object."""
    p = subparsers.add_parser(
        "plan",
        help="assign symbols to pipes by a day's load (for tb run --plan)",
        description="Weigh each symbol over the captures (tb record / tb gen files) and assign "
        "symbols to pipes heaviest first, each to the least loaded pipe; print the busiest "
        "pipe's expected share. tb run --plan FILE then sends planned symbols to their pipes "
        "and every other symbol by the plan's hash.",
        epilog="exit status: 0 ok, 1 the plan could not be written, 2 bad arguments or captures",
    )
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help="capture files to weigh")
    p.add_argument(
        "--pipes", "-n", type=positive_int, required=True, help="number of pipes of tb run"
    )
    p.add_argument(
        "-o",
        "--output",
        default="-",
        metavar="FILE",
        help="write the plan here (default: standard output)",
    )
    p.add_argument(
        "--by",
        choices=["trades", "bytes"],
        default="trades",
        help="weigh a symbol by its trades (default) or by its records' bytes",
    )
    p.add_argument(
        "--hash",
        choices=sorted(HASHES),
        default="mixed",
        help="the hash for symbols the plan does not know (tb run's --hash; default mixed)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """`tb plan`: weigh, assign, write the plan, print one summary line (on stderr)."""
    weights: dict[bytes, int] = {}
    for path in args.captures:
        try:
            weigh(read_capture(path), args.by, weights)
        except CaptureError as exc:
            raise CLIError(str(exc)) from None
        except OSError as exc:
            raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not weights:
        raise CLIError("the captures hold no event with a symbol: nothing to plan")
    try:
        plan, loads, hashed = make_plan(weights, args.pipes, args.hash, args.by)
    except PlanError as exc:
        raise CLIError(str(exc)) from None
    text = plan.to_json()
    if args.output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        try:
            tmp = f"{args.output}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, args.output)
        except OSError as exc:
            print(f"tb plan: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    total = sum(loads)
    fair = total / args.pipes
    unit = "trades" if args.by == "trades" else "bytes"
    print(
        f"tb plan: {len(plan.symbols):,} symbols, {total:,} {unit} in {len(args.captures)}"
        f" capture(s), {args.pipes} pipes: busiest pipe {plan.expected_share * 100:.2f}%"
        f" = {max(loads) / fair:.3f}x the fair share (by the {args.hash} hash alone"
        f" {max(hashed) / fair:.3f}x)" + ("" if args.output == "-" else f" -> {args.output}"),
        file=sys.stderr,
        flush=True,
    )
    return 0

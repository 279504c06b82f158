"""An example worker: counts the records it gets, per pipe and per symbol.

    python3 -m tb.pipes.example_worker [--out FILE] FD...

tb appends the pipe fds to the worker's argv (and sets TB_PIPE_FDS); with no FD arguments the
fds come from TB_PIPE_FDS. At EOF on every pipe it prints one summary line and, with --out,
writes the summary as JSON to FILE (relative to its cwd, the work dir). Exit status 1 with one
line on stderr if a pipe ends inside a record.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

from tb.pipes.errors import PipeError
from tb.pipes.reader import read_records


def summarize(fds: list[int] | None) -> dict:
    """Read every record until EOF; return {"records", "per_pipe", "per_symbol", "undecodable"}."""
    per_pipe = Counter[int]()
    per_symbol = Counter[str]()
    undecodable = 0
    for pipe, record in read_records(fds):
        per_pipe[pipe] += 1
        # The feed's trades carry "sym":"X" early: read it without decoding the whole object
        # (a worker that needs every field would json.loads(record) here).
        k = record.find(b'"sym":"', 0, 40)
        if k >= 0:
            end = record.find(b'"', k + 7)
            if end > k and b"\\" not in record[k + 7 : end]:
                per_symbol[record[k + 7 : end].decode("utf-8", "replace")] += 1
                continue
        try:
            event = json.loads(record)
        except ValueError:
            undecodable += 1
            continue
        if isinstance(event, dict):
            sym = event.get("sym", event.get("pair"))
            per_symbol[str(sym)] += 1
    npipes = len(fds) if fds else len(os.environ.get("TB_PIPE_FDS", "").split(","))
    return {
        "records": sum(per_pipe.values()),
        "per_pipe": [per_pipe[i] for i in range(npipes)],
        "per_symbol": dict(sorted(per_symbol.items())),
        "undecodable": undecodable,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tb.pipes.example_worker", description=__doc__)
    parser.add_argument("--out", metavar="FILE", help="write the JSON summary here")
    parser.add_argument("fds", metavar="FD", type=int, nargs="*", help="pipe read ends")
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.fds or None)
    except PipeError as exc:
        print(f"example_worker: {exc}", file=sys.stderr)
        return 1
    per_pipe = " ".join(f"{i}={n}" for i, n in enumerate(summary["per_pipe"]))
    print(
        f"example_worker: {summary['records']} records, {len(summary['per_symbol'])} symbols;"
        f" per pipe: {per_pipe}",
        flush=True,
    )
    if args.out:
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            json.dump(summary, f)
        os.replace(tmp, args.out)  # readers never see half a summary
    return 0


if __name__ == "__main__":
    sys.exit(main())

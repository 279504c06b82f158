"""A test worker built on tb.worker.serve: each sub-worker logs every record it is handed.

Usage (as tb starts it): python serve_worker.py LOGDIR [--processes K] [--batch] [--decode]
[--sequence] [--fail-on SYM] FD...

Sub-worker k writes LOGDIR/<pid>.jsonl: a "start" line with its index and pipes, one line per
record ({"pipe": P, "raw": "..."}), written once per batch, and a "finish" line at the end.
--decode decodes every batch with decode_batch (the line then also has "sym"); --fail-on SYM
makes the handler raise on that symbol's first trade, --hang-on SYM sleep 60 s in it (--grace:
serve()'s). --sequence counts q anomalies and writes
the totals to LOGDIR/sequence.json when serve() returns. The exit status is serve()'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tb.worker import PipeError, SequenceCheck, decode_batch, serve


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("logdir")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--batch", action="store_true")
    parser.add_argument("--decode", action="store_true")
    parser.add_argument("--sequence", action="store_true")
    parser.add_argument("--fail-on")
    parser.add_argument("--hang-on")
    parser.add_argument("--grace", type=float, default=5)
    parser.add_argument("fds", type=int, nargs="*")
    args = parser.parse_intermixed_args()
    state = {}

    def out(line: dict) -> None:
        os.write(state["fd"], (json.dumps(line) + "\n").encode())

    def start(sub) -> None:
        path = os.path.join(args.logdir, f"{os.getpid()}.jsonl")
        state["fd"] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        out({"start": sub.index, "pipes": sub.pipes, "pid": os.getpid(), "t": time.monotonic()})

    def check_fail(sym: str | None) -> None:
        if args.fail_on and sym == args.fail_on:
            raise RuntimeError(f"failing on {sym} as asked")
        if args.hang_on and sym == args.hang_on:
            out({"hanging": os.getpid()})
            time.sleep(60)

    def on_batch(pipe: int, records: list) -> None:
        lines = []
        syms = [e.get("sym") for e in decode_batch(records)] if args.decode else None
        for k, record in enumerate(records):
            line = {"pipe": pipe, "raw": bytes(record).decode()}
            if syms is not None:
                line["sym"] = syms[k]
                check_fail(syms[k])
            lines.append(json.dumps(line) + "\n")
        os.write(state["fd"], "".join(lines).encode())

    def on_record(pipe: int, record: bytes) -> None:
        if args.fail_on or args.hang_on:
            check_fail(json.loads(record).get("sym"))
        out({"pipe": pipe, "raw": record.decode()})

    def finish(sub) -> None:
        out({"finish": sub.index, "stopping": sub.stopping, "records": sub.records})
        os.close(state["fd"])

    sequence = SequenceCheck() if args.sequence else None
    try:
        status = serve(
            on_batch if args.batch else on_record,
            args.processes,
            batch=args.batch,
            fds=args.fds or None,
            start=start,
            finish=finish,
            sequence=sequence,
            grace=args.grace,
        )
    except PipeError as exc:
        print(f"serve_worker: {exc}", file=sys.stderr)
        return 1
    if sequence is not None:
        with open(os.path.join(args.logdir, "sequence.json"), "w") as f:
            json.dump({"repeats": sequence.repeats, "backwards": sequence.backwards}, f)
    return status


if __name__ == "__main__":
    sys.exit(main())

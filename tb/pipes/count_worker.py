"""The profiling worker: counts records as fast as the pipes deliver them (`tb profile` uses it).

Usage (as a balancer starts it): python3 -m tb.pipes.count_worker [--out FILE] [--progress FILE]
[--latency [--spin]] FD...

Counting does not walk the length headers: a record is `[u32 LE length][JSON object]`, a record
shorter than 64 KiB has a header ending in two zero bytes, and JSON text never holds a raw NUL,
so `b"\\x00\\x00{"` occurs exactly once per record and bytes.count finds them at memchr speed.
(Pinned by tests/pipes/test_count_worker.py; `--verify` walks the headers instead.) With
`--progress FILE` the running total is kept in an 8-byte little-endian counter at the start of
FILE (mmap'd), followed by the CLOCK_MONOTONIC seconds of the first and the latest record (two
float64) and the per-pipe counts (uint64 each), so a harness can watch it, and read the result
even from a balancer whose pipes never reach EOF, without a pipe of its own. With `--latency` every record
is parsed for its `"q"` (the trade's sequence number) and stamped with CLOCK_MONOTONIC on
arrival; --out then holds those pairs. `--spin` busy-polls the pipes instead of sleeping in poll,
so the stamp is taken when the record enters its pipe rather than after the worker's wake-up
(tens to hundreds of microseconds on a VM): what the balancer adds, not what the worker's
scheduler adds. It costs a core.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import select
import signal
import struct
import sys
import time

from tb.pipes.errors import PipeError
from tb.pipes.reader import fds_from_env, read_records

_MARK = b"\x00\x00{"


def _publish(progress: mmap.mmap, total: int, first: float, last: float, i: int, n: int) -> None:
    struct.pack_into("<Qdd", progress, 0, total, first, last)
    struct.pack_into("<Q", progress, 24 + 8 * i, n)


def read_progress(buf, npipes: int) -> tuple[int, float, float, list[int]]:
    """(total, first, last, per_pipe) from a --progress file's bytes."""
    total, first, last = struct.unpack_from("<Qdd", buf, 0)
    return total, first, last, list(struct.unpack_from(f"<{npipes}Q", buf, 24))


def progress_size(npipes: int) -> int:
    return 24 + 8 * npipes


def count(fds: list[int], progress: mmap.mmap | None) -> dict:
    """Count records per pipe until every pipe is at EOF."""
    index = {fd: i for i, fd in enumerate(fds)}
    records = [0] * len(fds)
    nbytes = [0] * len(fds)
    tails = {fd: b"" for fd in fds}
    poller = select.epoll()
    for fd in fds:
        poller.register(fd, select.EPOLLIN)
    live = len(fds)
    total = 0
    bufsize = 1 << 20
    first = last = 0.0
    while live:
        for fd, _ in poller.poll():
            chunk = os.read(fd, bufsize)
            if not chunk:
                poller.unregister(fd)
                live -= 1
                continue
            i = index[fd]
            window = tails[fd] + chunk  # a mark split across reads is counted once, here
            n = window.count(_MARK)
            tails[fd] = chunk[-2:]
            records[i] += n
            nbytes[i] += len(chunk)
            total += n
            last = time.monotonic()
            if not first:
                first = last
            if progress is not None:
                _publish(progress, total, first, last, i, records[i])
    poller.close()
    return {"records": total, "per_pipe": records, "bytes": nbytes, "first": first, "last": last}


def count_exactly(
    fds: list[int],
    progress: mmap.mmap | None,
    latency: bool,
    partial: dict | None = None,
    spin: bool = False,
) -> dict:
    """Walk every header (and with latency, stamp each record's "q" on arrival).

    `partial`, if given, holds the stamps so far (for a worker stopped by SIGTERM)."""
    records = [0] * len(fds)
    nbytes = [0] * len(fds)
    stamps: list[tuple[int, int]] = []
    if partial is not None:
        partial.update(records=0, per_pipe=records, bytes=nbytes, stamps=stamps, stopped=True)
    total = 0
    first = last = 0.0
    for pipe, record in read_records(fds, spin=spin):
        records[pipe] += 1
        nbytes[pipe] += 4 + len(record)
        total += 1
        if latency:
            t = time.monotonic_ns()
            k = record.find(b'"q"')
            if k >= 0:
                k = record.index(b":", k) + 1
                end = k
                while end < len(record) and record[end] in b" 0123456789":
                    end += 1
                stamps.append((int(record[k:end]), t))
        last = time.monotonic()
        if not first:
            first = last
        if progress is not None:
            _publish(progress, total, first, last, pipe, records[pipe])
    out = {"records": total, "per_pipe": records, "bytes": nbytes, "first": first, "last": last}
    if latency:
        out["stamps"] = stamps
    return out


class _Stopped(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _Stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tb.pipes.count_worker", description=__doc__)
    parser.add_argument("--out", metavar="FILE", help="write the JSON summary here at EOF")
    parser.add_argument("--progress", metavar="FILE", help="keep the running count in FILE")
    parser.add_argument("--latency", action="store_true", help="stamp each record's q on arrival")
    parser.add_argument(
        "--spin", action="store_true", help="busy-poll the pipes (latency without the wake-up)"
    )
    parser.add_argument("--verify", action="store_true", help="walk every header (slower)")
    parser.add_argument("fds", metavar="FD", type=int, nargs="*", help="pipe read ends")
    args = parser.parse_args(argv)
    try:
        fds = args.fds or fds_from_env()
    except PipeError as exc:
        print(f"count_worker: {exc}", file=sys.stderr)
        return 2
    # A balancer that dies sends SIGHUP (PR_SET_PDEATHSIG): count what is in the pipes anyway,
    # to EOF, so the summary is written.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # SIGTERM: stop where it is and still write the summary (a harness ends a worker whose
    # pipes never reach EOF this way).
    signal.signal(signal.SIGTERM, _stop)
    progress = None
    if args.progress:
        size = progress_size(len(fds))
        with open(args.progress, "wb") as f:
            f.write(b"\0" * size)
        handle = open(args.progress, "r+b")  # noqa: SIM115 (kept open with the mmap)
        progress = mmap.mmap(handle.fileno(), size)
    partial: dict = {}
    try:
        if args.latency or args.verify:
            summary = count_exactly(fds, progress, args.latency, partial, args.spin)
        else:
            summary = count(fds, progress)
    except PipeError as exc:
        print(f"count_worker: {exc}", file=sys.stderr)
        return 1
    except _Stopped:
        summary = partial or {"records": 0, "stopped": True}
    if args.out:
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            json.dump(summary, f)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
even from a balancer whose pipes never reach EOF, without a pipe of its own. With `--latency`
every record is parsed for its `"q"` (the trade's sequence number) and stamped with
CLOCK_MONOTONIC when the read that completed it returned (a round of poll reads every ready pipe
before any record is parsed: see Stamper); --out then holds those pairs. `--spin` busy-polls the
pipes instead of sleeping in poll, so the stamp is taken when the record enters its pipe rather
than after the worker's wake-up (tens to hundreds of microseconds on a VM): what the balancer
adds, not what the worker's scheduler adds. It costs a core.
"""

from __future__ import annotations

import argparse
import bisect
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


def count_exactly(fds: list[int], progress: mmap.mmap | None, partial: dict | None = None) -> dict:
    """Walk every header (--verify). `partial`, if given, holds the counts so far (for a worker
    stopped by SIGTERM)."""
    records = [0] * len(fds)
    nbytes = [0] * len(fds)
    if partial is not None:
        partial.update(records=0, per_pipe=records, bytes=nbytes, stopped=True)
    total = 0
    first = last = 0.0
    for pipe, record in read_records(fds):
        records[pipe] += 1
        nbytes[pipe] += 4 + len(record)
        total += 1
        last = time.monotonic()
        if not first:
            first = last
        if progress is not None:
            _publish(progress, total, first, last, pipe, records[pipe])
    return {"records": total, "per_pipe": records, "bytes": nbytes, "first": first, "last": last}


class Stamper:
    """--latency: each read of a pipe is stamped (CLOCK_MONOTONIC ns) as it returns, and every
    record's "q" gets the stamp of the read that completed it; summary()["stamps"] holds the
    (q, ns) pairs.

    The records are walked only in summary(). A worker that parses as it reads (~3 us a record
    in Python) stamps the records of a balancer that writes a dozen pipes at once a dozen
    parses late, and misses the next writes while it parses: its own backlog, not the
    balancer's latency. Here a round of poll reads every ready pipe and counts its records by
    their marks (as count() does), nothing more. spin: poll without sleeping, so a record is
    stamped microseconds after it enters its pipe (feed->pipe); else the worker's wake-up is
    included (feed->worker). The bytes are kept until summary(): for latency runs (a trickle),
    not for hours of feed.
    """

    def __init__(self, fds: list[int], progress: mmap.mmap | None, spin: bool = False) -> None:
        self.fds = fds
        self.progress = progress
        self.spin = spin
        self.chunks: list[list[bytes]] = [[] for _ in fds]
        self.reads: list[list[tuple[int, int]]] = [[] for _ in fds]  # (bytes so far, ns)
        self.first = self.last = 0.0

    def run(self) -> None:
        """Read every pipe to EOF (SIGTERM may end it sooner: summary() holds what was read)."""
        fds, chunks, reads, progress = self.fds, self.chunks, self.reads, self.progress
        index = {fd: i for i, fd in enumerate(fds)}
        sizes = [0] * len(fds)
        marks = [0] * len(fds)
        tails = [b""] * len(fds)
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        timeout = 0 if self.spin else None
        clock, read = time.monotonic_ns, os.read
        live = len(fds)
        total = 0
        while live:
            got = []
            for fd, _ in poller.poll(timeout):
                got.append((fd, read(fd, 1 << 16), clock()))  # (64 KiB: a fresh 1 MiB costs more)
            for fd, chunk, t in got:
                i = index[fd]
                if not chunk:
                    poller.unregister(fd)
                    live -= 1
                    continue
                chunks[i].append(chunk)
                sizes[i] += len(chunk)
                reads[i].append((sizes[i], t))
                n = (tails[i] + chunk[:2]).count(_MARK) + chunk.count(_MARK)
                tails[i] = chunk[-2:]
                if n:
                    marks[i] += n
                    total += n
                    self.last = time.monotonic()
                    self.first = self.first or self.last
                    if progress is not None:
                        _publish(progress, total, self.first, self.last, i, marks[i])

    def summary(self, stopped: bool = False) -> dict:
        """Walk every pipe's records; PipeError if a pipe that reached EOF ends inside one."""
        unpack = struct.Struct("<I").unpack_from
        per_pipe, nbytes, stamps = [], [], []
        for i, chunks in enumerate(self.chunks):
            data = b"".join(chunks)
            ends = [size for size, _ in self.reads[i]]
            times = [t for _, t in self.reads[i]]
            pos = count = 0
            while len(data) - pos >= 4:
                stop = pos + 4 + unpack(data, pos)[0]
                if stop > len(data):
                    break
                q = _sequence_number(data, pos + 4, stop)
                if q is not None:
                    stamps.append((q, times[bisect.bisect_left(ends, stop)]))
                count += 1
                pos = stop
            if pos != len(data) and not stopped:
                raise PipeError(
                    f"pipe {i} (fd {self.fds[i]}) ended inside a record: "
                    f"{len(data) - pos} bytes left over"
                )
            per_pipe.append(count)
            nbytes.append(len(data))
        out = {"records": sum(per_pipe), "per_pipe": per_pipe, "bytes": nbytes}
        out.update(first=self.first, last=self.last, stamps=stamps)
        if stopped:
            out["stopped"] = True
        return out


def _sequence_number(buf: bytes, start: int, stop: int) -> int | None:
    """The integer value of the "q" key in buf[start:stop] (a record's JSON), None if absent."""
    k = buf.find(b'"q"', start, stop)
    if k < 0:
        return None
    k = buf.index(b":", k, stop) + 1
    end = k
    while end < stop and buf[end] in b" 0123456789":
        end += 1
    return int(buf[k:end])


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
        if args.latency:
            stamper = Stamper(fds, progress, args.spin)
            stopped = False
            try:
                stamper.run()
            except _Stopped:
                stopped = True
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (the summary is being made)
            summary = stamper.summary(stopped)
        elif args.verify:
            summary = count_exactly(fds, progress, partial)
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

"""Benchmark the worker side: records/s per core for each way of reading and decoding the pipes.

    python3 tools/bench_worker.py [--trades N] [--pipes N] [--rounds N] [--markdown]

A writer process fills N pipes (1 MiB each) with the records of a synthetic burst (tb gen's
trades, the feed's own bytes) as fast as they are taken; the reader, in this process, runs one
way of reading and measures its own CPU time (time.process_time), so the figure is what one core
of a worker does, whatever the writer costs. The modes, each to EOF on every pipe:

- read_records          (pipe, bytes) per record, no decoding
- read_batches          (pipe, [memoryview...]) per read, no decoding
- plain + json          read_records and json.loads per record: the classic worker
- plain + orjson        read_records and orjson.loads per record
- batch + json          read_batches and decode_batch with json (one call per batch)
- batch + orjson        read_batches and `for event in map(orjson.loads, records)`
- batch + orjson, list  read_batches and decode_batch with orjson (a list per batch)
- serve, batch + orjson serve(handler, batch=True) in this process, map(orjson.loads, records)

The modes run interleaved, --rounds times; the table gives each one's median and its ratio to
`plain + json`. Divide a burst's trades/s by a mode's figure for the processes it needs.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import struct
import sys
import time

from tb.gen import generate
from tb.pipes.reader import read_batches, read_records
from tb.worker.decode import decoder, orjson
from tb.worker.serve import serve

_F_SETPIPE_SZ = 1031


def make_records(trades: int) -> list[bytes]:
    """The event objects of a synthetic burst, as the feed's own bytes."""
    out = []
    for payload in generate(profile="burst", trades=trades, seed=4):
        body = payload[1:-1]  # tb gen's messages are `[{...},{...}]` with no space between
        out.extend(part if part.endswith(b"}") else part + b"}" for part in body.split(b"},"))
    return out


def frame_per_pipe(records: list[bytes], npipes: int) -> list[bytes]:
    runs: list[list[bytes]] = [[] for _ in range(npipes)]
    for k, rec in enumerate(records):
        runs[k % npipes].append(struct.pack("<I", len(rec)) + rec)
    return [b"".join(r) for r in runs]


def _writer(writes: list[int], blobs: list[bytes]) -> None:
    """Write each pipe's blob, round-robin in 256 KiB pieces, then close (EOF)."""
    views = [memoryview(b) for b in blobs]
    for fd in writes:
        os.set_blocking(fd, False)
    live = set(range(len(writes)))
    while live:
        progressed = False
        for i in list(live):
            try:
                n = os.write(writes[i], views[i][: 256 << 10])
            except BlockingIOError:
                continue
            progressed = True
            views[i] = views[i][n:]
            if not views[i]:
                os.close(writes[i])
                live.discard(i)
        if not progressed:
            time.sleep(0.0002)


def run(mode, blobs: list[bytes]) -> tuple[int, float]:
    """(records, CPU seconds of the reader) for one mode over fresh pipes."""
    pairs = [os.pipe() for _ in blobs]
    for r, _ in pairs:
        fcntl.fcntl(r, _F_SETPIPE_SZ, 1 << 20)
    pid = os.fork()
    if pid == 0:
        try:
            for r, _ in pairs:
                os.close(r)
            _writer([w for _, w in pairs], blobs)
        finally:
            os._exit(0)
    for _, w in pairs:
        os.close(w)
    reads = [r for r, _ in pairs]
    start = time.process_time()
    n = mode(reads)
    cpu = time.process_time() - start
    os.waitpid(pid, 0)
    for r in reads:
        try:
            os.close(r)
        except OSError:
            pass  # (serve() closes them itself)
    return n, cpu


def mode_read_records(fds):
    return sum(1 for _ in read_records(fds))


def mode_read_batches(fds):
    return sum(len(records) for _, records in read_batches(fds))


def mode_plain(load):
    def run(fds):
        n = 0
        for _, record in read_records(fds):
            load(record)
            n += 1
        return n

    return run


def mode_batch(batch_decode):
    def run(fds):
        n = 0
        for _, records in read_batches(fds):
            n += len(batch_decode(records))
        return n

    return run


def mode_lazy(load):
    def run(fds):
        n = 0
        for _, records in read_batches(fds):
            for _event in map(load, records):
                n += 1
        return n

    return run


def mode_serve(load):
    def run(fds):
        count = [0]

        def handler(pipe, records):
            for _event in map(load, records):
                count[0] += 1

        serve(handler, 1, batch=True, fds=fds)
        return count[0]

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trades", type=int, default=400_000)
    p.add_argument("--pipes", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = p.parse_args(argv)
    records = make_records(args.trades)
    for rec in records[:1000]:
        json.loads(rec)  # (the split above gave whole objects)
    blobs = frame_per_pipe(records, args.pipes)
    json_load, json_batch = decoder("json")
    modes = {
        "read_records": mode_read_records,
        "read_batches": mode_read_batches,
        "plain + json": mode_plain(json_load),
        "batch + json": mode_batch(json_batch),
    }
    if orjson is not None:
        orjson_load, orjson_batch = decoder("orjson")
        modes["plain + orjson"] = mode_plain(orjson_load)
        modes["batch + orjson"] = mode_lazy(orjson_load)
        modes["batch + orjson, list"] = mode_batch(orjson_batch)
        modes["serve, batch + orjson"] = mode_serve(orjson_load)
    rates: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, mode in modes.items():
            n, cpu = run(mode, blobs)
            if n != len(records):
                print(f"{name}: read {n} records of {len(records)}", file=sys.stderr)
                return 1
            rates[name].append(n / cpu)
    base = statistics.median(rates["plain + json"])
    size = sum(map(len, records)) / len(records)
    print(f"{len(records)} records (mean {size:.0f} bytes) over {args.pipes} pipes, "
          f"{args.rounds} rounds, median; orjson {orjson.__version__ if orjson else 'absent'}")  # fmt: skip
    if args.markdown:
        print("| mode | records/s per core | µs per record | vs plain + json |")
        print("|---|---:|---:|---:|")
    for name, values in rates.items():
        rate = statistics.median(values)
        if args.markdown:
            print(f"| {name} | {rate / 1e6:.2f}M | {1e6 / rate:.2f} | {rate / base:.2f}× |")
        else:
            print(f"{name:24} {rate / 1e6:6.2f}M rec/s/core  {1e6 / rate:5.2f} µs  "
                  f"{rate / base:5.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

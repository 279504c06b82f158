#!/usr/bin/env python3
"""io_uring through the liburing bindings against plain syscalls, per operation, side by side.

    python3 tools/uring_bench.py [--iterations 20000] [--pipes 8]

Measures, on a socketpair and real pipes in this process (nothing leaves the machine):
  wake-up:  send 1 byte, then wait for it and read it
            epoll_wait + recv_into  |  io_uring one-shot poll + recv  |  io_uring recv completion
  writes:   one 100-byte record to each of --pipes pipes
            os.write per pipe  |  all as io_uring writes in one submit-and-wait
It is the measurement behind `--loop auto` choosing epoll (see tb/loop/uring.py).
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=20000)
    p.add_argument("--pipes", type=int, default=8)
    args = p.parse_args(argv)
    try:
        import liburing as u

        u.io_uring_cqe  # noqa: B018 -- the 2024.5.3 API
    except (ImportError, AttributeError):
        print("uring_bench: needs liburing 2024.5.3: pip install -e '.[uring]'", file=sys.stderr)
        return 2
    n = args.iterations
    ring, cqe = u.io_uring(), u.io_uring_cqe()
    u.io_uring_queue_init(256, ring, 0)
    ts = u.timespec(1.0)

    def reap() -> None:
        while u.io_uring_peek_cqe(ring, cqe) == 0:
            cqe.res  # noqa: B018
            u.io_uring_cqe_seen(ring, cqe)

    a, b = socket.socketpair()
    b.setblocking(False)
    buf = bytearray(65536)
    ep = select.epoll()
    ep.register(b.fileno(), select.EPOLLIN)
    results: dict[str, float] = {}

    t0 = time.perf_counter()
    for _ in range(n):
        a.send(b"z")
        ep.poll(1.0)
        b.recv_into(buf)
    results["wake-up: epoll_wait + recv_into"] = time.perf_counter() - t0

    def uring_wake_ups(prep, then_recv: bool) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            a.send(b"z")
            sqe = u.io_uring_get_sqe(ring)
            prep(sqe)
            sqe.user_data = 2
            u.io_uring_submit_and_wait_timeout(ring, cqe, 1, ts)
            reap()
            if then_recv:
                b.recv_into(buf)
        return time.perf_counter() - t0

    fd = b.fileno()
    results["wake-up: io_uring poll + recv_into"] = uring_wake_ups(
        lambda sqe: u.io_uring_prep_poll_add(sqe, fd, select.POLLIN), True
    )
    results["wake-up: io_uring recv completion"] = uring_wake_ups(
        lambda sqe: u.io_uring_prep_recv(sqe, fd, buf, len(buf), 0), False
    )

    pipes = [os.pipe() for _ in range(args.pipes)]
    record = b"x" * 100
    t0 = time.perf_counter()
    for _ in range(n):
        for _r, w in pipes:
            os.write(w, record)
        for r, _w in pipes:
            os.read(r, 4096)
    results[f"writes: {args.pipes} x os.write (+ reads)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for _ in range(n):
        for _r, w in pipes:
            sqe = u.io_uring_get_sqe(ring)
            u.io_uring_prep_write(sqe, w, record, len(record), 0)
            sqe.user_data = 4
        u.io_uring_submit_and_wait_timeout(ring, cqe, len(pipes), ts)
        reap()
        for r, _w in pipes:
            os.read(r, 4096)
    results[f"writes: {args.pipes} io_uring writes, one submit (+ reads)"] = (
        time.perf_counter() - t0
    )
    u.io_uring_queue_exit(ring)
    for name, seconds in results.items():
        print(f"{name:48} {seconds / n * 1e6:8.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

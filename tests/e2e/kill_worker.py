"""A worker for the kill tests: logs every record it takes, and can be SIGKILLed anywhere.

Usage (as tb starts it): python kill_worker.py LOGFILE FD0 FD1 ...

It reads each record with exact-size reads (header, then the body in two parts), so its pipe
position is exactly what it consumed. A record is logged BEFORE its last byte is read, and a "+"
line follows once that byte is read: every record is either logged, or its last byte is still in
the pipe (a torn record that tb must cut and count). A logged record without its "+" is the one
case that is both: killed between the two, its last byte may or may not have been read. A pause
in the middle of some records makes kills land mid-record often.
"""

import os
import random
import select
import struct
import sys
import time


def read_exact(fd: int, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def main() -> int:
    log = open(sys.argv[1], "ab", buffering=0)
    fds = [int(a) for a in sys.argv[2:]]
    index = {fd: i for i, fd in enumerate(fds)}
    rng = random.Random(os.getpid())
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    open_fds = set(fds)
    while open_fds:
        for fd, _ in poller.poll():
            header = read_exact(fd, 4)
            if header is None:
                poller.unregister(fd)
                open_fds.discard(fd)
                continue
            (n,) = struct.unpack("<I", header)
            if not 2 <= n <= 1 << 20:
                log.write(b"CORRUPT header %d\n" % n)  # a torn record reached a new worker
                return 1
            head = read_exact(fd, n - 1)
            if rng.random() < 0.1:
                time.sleep(0.0005)  # a kill now lands inside this record
            # Records are JSON objects: the last byte is "}". Log, then take it from the pipe.
            line = b"%d " % index[fd] + head + b"}\n"
            log.write(line)
            if read_exact(fd, 1) != b"}":
                log.write(b"CORRUPT\n")
                return 1
            log.write(b"+\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

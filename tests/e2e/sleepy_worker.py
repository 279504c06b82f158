"""A worker that reads nothing for SECONDS, then everything: checks every record's "q".

Usage: sleepy_worker.py OUT SECONDS FD... -- writes to OUT a JSON object: records, per-pipe
counts, whether "q" rose strictly within every pipe (feed order: the feed's q rises), whether
every q was unique, when it woke up and when it read its last record (CLOCK_MONOTONIC).
"""

import json
import os
import re
import select
import struct
import sys
import time

out, sleep, fds = sys.argv[1], float(sys.argv[2]), [int(a) for a in sys.argv[3:]]
time.sleep(sleep)
woke = time.monotonic()
Q = re.compile(rb'"q":(\d+)')
last_q = {fd: -1 for fd in fds}
counts = {fd: 0 for fd in fds}
seen: set[int] = set()
in_order = True
duplicates = 0
bufs = {fd: b"" for fd in fds}
live = set(fds)
last_read = woke
while live:
    ready, _, _ = select.select(list(live), [], [])
    for fd in ready:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            live.discard(fd)
            continue
        last_read = time.monotonic()
        buf, pos = bufs[fd] + chunk, 0
        while pos + 4 <= len(buf):
            (n,) = struct.unpack_from("<I", buf, pos)
            if pos + 4 + n > len(buf):
                break
            q = int(Q.search(buf, pos + 4, pos + 4 + n).group(1))
            if q <= last_q[fd]:
                in_order = False
            last_q[fd] = q
            if q in seen:
                duplicates += 1
            seen.add(q)
            counts[fd] += 1
            pos += 4 + n
        bufs[fd] = buf[pos:]
result = {
    "records": sum(counts.values()),
    "per_pipe": [counts[fd] for fd in fds],
    "in_order": in_order,
    "duplicates": duplicates,
    "leftover": sum(map(len, bufs.values())),
    "woke": woke,
    "last_read": last_read,
}
with open(out, "w") as f:
    json.dump(result, f)

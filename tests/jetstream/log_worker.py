"""A worker for tb consume in tests: appends one JSON line per record (its partition, from
TB_PARTITIONS, and its bytes) to OUTFILE, with one write each, so that what the file holds is
exactly what this worker took from its pipes, even when it is killed.

Usage (as tb consume starts it): python log_worker.py OUTFILE FD0 FD1 ...
"""

import json
import os
import sys

from tb.pipes import read_records


def main() -> int:
    out = sys.argv[1]
    fds = [int(a) for a in sys.argv[2:]]
    partitions = [int(p) for p in os.environ["TB_PARTITIONS"].split(",")]
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for pipe, record in read_records(fds):
        line = json.dumps({"partition": partitions[pipe], "raw": record.decode()}) + "\n"
        os.write(fd, line.encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A test worker: logs every record it reads (pipe, raw bytes) to a JSON-lines file, then exits.

Usage (as tb starts it): python verify_worker.py OUTFILE FD0 FD1 ...
Each record is written out (and flushed) before the next is read, so what the file holds is
exactly what this worker took from the pipes.
"""

import json
import sys

from tb.pipes import read_records


def main() -> int:
    out = sys.argv[1]
    fds = [int(a) for a in sys.argv[2:]]
    with open(out, "w") as f:
        for pipe, record in read_records(fds):
            obj = json.loads(record)
            f.write(
                json.dumps({"pipe": pipe, "raw": record.decode(), "sym": obj.get("sym")}) + "\n"
            )
            f.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

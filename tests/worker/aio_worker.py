"""A test worker on asyncio: logs every record from aread_records as tests/e2e/verify_worker does.

Usage (as tb starts it): python aio_worker.py OUTFILE FD0 FD1 ...
"""

import asyncio
import json
import sys

from tb.worker import aread_records


async def main() -> int:
    with open(sys.argv[1], "w") as f:
        async for pipe, record in aread_records([int(a) for a in sys.argv[2:]]):
            f.write(json.dumps({"pipe": pipe, "raw": record.decode()}) + "\n")
            await asyncio.sleep(0)  # (other tasks run between records)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

"""A naive balancer, for comparison in `tb profile --balancer 'python3 tools/naive_client.py'`.

What most Python feed clients look like: the `websockets` library, json.loads of every message,
json.dumps of every trade, crc32 of the symbol, one os.write per trade. Same positional CLI and
worker contract as the C original (KEY URL NPIPES WORKDIR WORKER [ARGS...]). Not part of tb.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib

from lb_cli import run, start
from websockets.sync.client import connect


def main() -> int:
    key, url, writes, proc = start(sys.argv[1:])
    n = len(writes)
    with connect(url, compression=None, max_size=None) as ws:
        ws.recv()
        ws.send(json.dumps({"action": "auth", "params": key}))
        ws.recv()
        ws.send(json.dumps({"action": "subscribe", "params": "T.*"}))
        for message in ws:
            for event in json.loads(message):
                if event.get("ev") != "T":
                    continue
                body = json.dumps(event, separators=(",", ":")).encode()
                pipe = zlib.crc32(event["sym"].encode()) % n
                os.write(writes[pipe], struct.pack("<I", len(body)) + body)
    for w in writes:
        os.close(w)
    return proc.wait()


if __name__ == "__main__":
    raise SystemExit(run(main))

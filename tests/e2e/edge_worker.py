"""A test worker for tb's process edges. It reads its pipes record by record -- exactly a header,
then exactly its body -- so it never takes from a pipe more than it has logged, and at EOF on every
pipe it writes what it got.

Usage (as tb starts it): python edge_worker.py OUT [--exit-after N --hold PATH] FD0 FD1 ...
- OUT.<pid>.json is written at the end: {"count": n, "ids": {sym: [trade id, ...]}} in the order
  read; OUT.<pid>.progress holds the count read so far (rewritten every 1,000 records).
- --exit-after N --hold PATH [--deaths D]: after N records, wait until PATH exists, then write
  OUT and exit 3 -- the first D workers of a run do (default 1: each leaves OUT.died.K and
  OUT.died behind); later ones read to EOF.
SIGINT, SIGTERM and SIGHUP have their default action: any of them kills this worker at once.
"""

import json
import os
import select
import signal
import sys
import time


def read_exactly(fd: int, n: int) -> bytes | None:
    parts, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    args = sys.argv[1:]
    out = args.pop(0)
    exit_after, hold = None, None
    deaths = 1
    if args[:1] == ["--exit-after"]:
        exit_after, hold = int(args[1]), args[3]
        args = args[4:]
        if args[:1] == ["--deaths"]:
            deaths, args = int(args[1]), args[2:]
        died = len(
            [
                n
                for n in os.listdir(os.path.dirname(out) or ".")
                if n.startswith(os.path.basename(out) + ".died.")
            ]
        )
        if died >= deaths:
            exit_after = None
    fds = [int(a) for a in args]
    ids: dict[str, list[str]] = {}
    count = 0
    open_fds = set(fds)
    me = os.getpid()

    def save() -> None:
        with open(f"{out}.{me}.json.tmp", "w") as f:
            json.dump({"count": count, "ids": ids}, f)
        os.rename(f"{out}.{me}.json.tmp", f"{out}.{me}.json")

    while open_fds:
        ready, _, _ = select.select(sorted(open_fds), [], [])
        for fd in ready:
            header = read_exactly(fd, 4)
            if header is None:
                open_fds.discard(fd)
                continue
            body = read_exactly(fd, int.from_bytes(header, "little"))
            obj = json.loads(body)
            ids.setdefault(obj["sym"], []).append(obj["i"])
            count += 1
            if count % 1000 == 0:
                with open(f"{out}.{me}.progress", "w") as f:
                    f.write(str(count))
            if exit_after is not None and count == exit_after:
                died = len(
                    [
                        n
                        for n in os.listdir(os.path.dirname(out) or ".")
                        if n.startswith(os.path.basename(out) + ".died.")
                    ]
                )
                open(f"{out}.died.{died + 1}", "w").close()
                open(out + ".died", "w").close()
                with open(f"{out}.{me}.progress", "w") as f:
                    f.write(str(count))
                while not os.path.exists(hold):
                    time.sleep(0.01)
                save()
                return 3
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

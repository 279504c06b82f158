"""Append each symbol's trades to a file of its own: OUT/SYMBOL.jsonl, one record a line.

    tb run URL --pipes 8 -- python3 examples/split_by_symbol.py --out trades [--processes 4]

Each line is the feed's own JSON of one event, unchanged, in feed order (tb keeps a symbol on one
pipe and serve() each pipe in one process, so two processes never append to one file). Records
without a symbol (tb's gap records) go to OUT/_other.jsonl. The symbol is read from the
record's bytes, without decoding it. A batch is appended with one write per symbol; at most
--open-files files are kept open per process (the least recently written is closed first).
A file name is the symbol with `/` and anything else unsafe %-escaped (EUR/USD -> EUR%2FUSD).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import OrderedDict
from urllib.parse import quote

from tb.worker import PipeError, SubWorker, serve

_SYM = re.compile(rb'"(?:sym|pair)"\s*:\s*"([^"\\]*)"')


def file_name(sym: str) -> str:
    name = quote(sym, safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]  # no hidden files, no "." or ".."
    return f"{name}.jsonl"


class Splitter:
    def __init__(self, out: str, open_files: int) -> None:
        self.out = out
        self.limit = open_files
        self.files: OrderedDict[str, int] = OrderedDict()  # name -> fd, least recent first
        self.records = 0

    def add(self, pipe: int, records: list) -> None:
        lines: dict[bytes, list] = {}
        search = _SYM.search
        for record in records:
            m = search(record)
            key = m[1] if m else b""
            group = lines.get(key)
            if group is None:
                group = lines[key] = []
            group.append(record)
        for key, group in lines.items():
            name = file_name(key.decode("utf-8", "replace")) if key else "_other.jsonl"
            group.append(b"")  # (a newline after the last record too)
            os.write(self._fd(name), b"\n".join(group))
        self.records += len(records)

    def _fd(self, name: str) -> int:
        fd = self.files.get(name)
        if fd is not None:
            self.files.move_to_end(name)
            return fd
        if len(self.files) >= self.limit:
            os.close(self.files.popitem(last=False)[1])
        path = os.path.join(self.out, name)
        fd = self.files[name] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return fd

    def close(self) -> None:
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="split_by_symbol.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="trades", help="output folder (default ./trades)")
    parser.add_argument("--processes", type=int, default=2, help="sub-workers (default 2)")
    parser.add_argument("--open-files", type=int, default=256, help="open files per process")
    parser.add_argument("fds", type=int, nargs="*", help="pipe fds (tb appends them)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    state: dict[str, Splitter] = {}

    def start(sub: SubWorker) -> None:
        state["splitter"] = Splitter(args.out, max(1, args.open_files))

    def finish(sub: SubWorker) -> None:
        state["splitter"].close()
        print(
            f"split_by_symbol: sub-worker {sub.index}: {state['splitter'].records} records",
            file=sys.stderr,
            flush=True,
        )

    def handle(pipe: int, records: list) -> None:
        state["splitter"].add(pipe, records)

    try:
        return serve(
            handle, args.processes, batch=True, fds=args.fds or None, start=start, finish=finish
        )
    except PipeError as exc:
        print(f"split_by_symbol: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The C original's positional command line, for the reference balancers in tools/.

    KEY URL NPIPES WORKDIR WORKER [ARGS...]

start() makes NPIPES pipes and starts the worker in WORKDIR with the read ends appended to its
argv (the original's contract); the caller gets the key, the URL and the write ends. run(main)
is the tools' entry point: a failure (the server refused the connection, closed it during the
handshake...) is one line on stderr and exit 1, after the worker got EOF and exited.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable


def start(argv: list[str]) -> tuple[str, str, list[int], subprocess.Popen]:
    """(key, url, write ends, the worker) from argv = KEY URL NPIPES WORKDIR WORKER [ARGS...].

    A bad command line, or a worker that cannot start, exits 2 with one line saying why."""
    prog = os.path.basename(sys.argv[0])
    if len(argv) < 5:
        _usage(prog, "KEY URL NPIPES WORKDIR WORKER are required")
    key, url, npipes, workdir, *worker = argv
    if not npipes.isdigit() or int(npipes) < 1:
        _usage(prog, f"NPIPES must be a whole number of at least 1: {npipes!r}")
    if not os.path.isdir(workdir):
        _usage(prog, f"WORKDIR is not a directory: {workdir!r}")
    pipes = [os.pipe() for _ in range(int(npipes))]
    reads = [r for r, _ in pipes]
    try:
        proc = subprocess.Popen([*worker, *map(str, reads)], cwd=workdir, pass_fds=reads)
    except OSError as exc:
        _usage(prog, f"cannot start the worker {worker[0]!r}: {exc.strerror or exc}")
    for r in reads:
        os.close(r)
    writes = [w for _, w in pipes]
    _started.append((writes, proc))
    return key, url, writes, proc


_started: list[tuple[list[int], subprocess.Popen]] = []  # start()'s, for run() to wind down


def run(main: Callable[[], int]) -> int:
    """main()'s exit code; if it fails, one line saying why, the pipes closed, the worker
    waited for, and 1."""
    try:
        return main()
    except Exception as exc:  # (the tool's edge: whatever went wrong, said in one line)
        print(f"{os.path.basename(sys.argv[0])}: {exc or type(exc).__name__}", file=sys.stderr)
    for writes, proc in _started:
        for w in writes:
            try:
                os.close(w)
            except OSError:
                pass  # (closed by main already)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 1


def _usage(prog: str, why: str) -> None:
    print(f"usage: {prog} KEY URL NPIPES WORKDIR WORKER [ARGS...]", file=sys.stderr)
    print(f"{prog}: error: {why}", file=sys.stderr)
    raise SystemExit(2)

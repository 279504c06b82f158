"""The C original's positional command line, for the reference balancers in tools/.

    KEY URL NPIPES WORKDIR WORKER [ARGS...]

start() makes NPIPES pipes and starts the worker in WORKDIR with the read ends appended to its
argv (the original's contract); the caller gets the key, the URL and the write ends.
"""

from __future__ import annotations

import os
import subprocess


def start(argv: list[str]) -> tuple[str, str, list[int], subprocess.Popen]:
    """(key, url, write ends, the worker) from argv = KEY URL NPIPES WORKDIR WORKER [ARGS...]."""
    key, url, npipes, workdir, *worker = argv
    pipes = [os.pipe() for _ in range(int(npipes))]
    reads = [r for r, _ in pipes]
    proc = subprocess.Popen([*worker, *map(str, reads)], cwd=workdir, pass_fds=reads)
    for r in reads:
        os.close(r)
    return key, url, [w for _, w in pipes], proc

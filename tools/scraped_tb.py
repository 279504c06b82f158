"""tb lb with --metrics, scraped by a separate process: what Prometheus scraping costs the ingest.

    python3 tools/compare.py --workloads burst --runs 3 \
        --balancer "scraped every 100 ms=python3 tools/scraped_tb.py --every 0.1"

Takes the C original's command line (KEY URL NPIPES WORKDIR WORKER...), like every balancer
compare.py runs. It forks a scraper (GET /metrics every --every seconds, in its own process so
its CPU is not tb's), then becomes `tb lb --metrics 127.0.0.1:PORT ...` itself (exec), so the
process compare.py measures is tb. The scraper stops when tb is gone and says on stderr how many
scrapes it made.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.error
import urllib.request


def scrape_until_parent_exits(port: int, every: float, parent: int) -> None:
    ok = failed = 0
    url = f"http://127.0.0.1:{port}/metrics"
    while os.getppid() == parent:
        t = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
            ok += 1
        except (urllib.error.URLError, OSError):
            failed += 1  # (tb not listening yet, or gone)
        time.sleep(max(0.0, every - (time.monotonic() - t)))
    os.write(2, f"scraped_tb: {ok} scrapes ({failed} refused)\n".encode())


def main(argv: list[str]) -> int:
    every = 0.1
    if argv[:1] == ["--every"]:
        every, argv = float(argv[1]), argv[2:]
    if len(argv) < 5:
        print(
            "usage: scraped_tb.py [--every SECONDS] KEY URL NPIPES WORKDIR WORKER...",
            file=sys.stderr,
        )
        return 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    parent = os.getpid()
    if os.fork() == 0:
        try:
            scrape_until_parent_exits(port, every, parent)
        finally:
            os._exit(0)
    cmd = [sys.executable, "-m", "tb", "lb", "--metrics", f"127.0.0.1:{port}", *argv]
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

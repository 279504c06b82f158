"""--on-overflow spill with real processes: a worker that sleeps behind a burst, the --max-spill
fallback, a full disk, an unusable spill directory, a stale spool a killed run left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from harness import LiveTb, Replay, run_tb

SLEEPY = str(Path(__file__).parent / "sleepy_worker.py")
COUNT_WORKER = [sys.executable, "-m", "tb.pipes.count_worker"]


def vm_rss(pid: int) -> int | None:
    """The process's resident set in bytes (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) << 10
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a tb's VmRSS every 20 ms until it exits; `base` is its RSS once it has started
    (imports done, pipes and worker up: it logs "connecting to"), before any trade."""

    def __init__(self, tb: LiveTb) -> None:
        self.tb = tb
        self.samples: list[int] = []
        self.base: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (rss := vm_rss(self.tb.proc.pid)) is not None:
            if self.base is None and any("connecting to" in ln for ln in list(self.tb.lines)):
                self.base = rss
            self.samples.append(rss)
            time.sleep(0.02)


def spill_run(tmp_path, trades: int, sleep: float, *args: str, spill_dir=None, live=False):
    """tb run --on-overflow spill over a burst of `trades`, behind a worker that reads nothing
    for `sleep` seconds; (tb, its final pairs, the worker's result, the replay's log, tb's RSS
    samples). The server closes after the burst (tb runs --once and drains in its final flush),
    or with `live` keeps the connection open like a live feed: tb drains while streaming and is
    stopped with SIGTERM once its stats line says every trade was written."""
    spill_dir = spill_dir or tmp_path / "spill"
    spill_dir.mkdir(exist_ok=True)
    out = tmp_path / "worker.json"
    replay = Replay("--gen-profile", "burst", "--gen-trades", str(trades),
                    *(() if live else ("--close-after",)))  # fmt: skip
    try:
        tb = LiveTb(["run", replay.url, "--pipes", "4", "--key", "k", "--stats", "0.5",
                     *(() if live else ("--once",)), "--on-overflow", "spill",
                     "--spill-dir", str(spill_dir), *args, "--workdir", str(tmp_path),
                     "--", sys.executable, SLEEPY, str(out), str(sleep)])  # fmt: skip
        rss = RssSampler(tb)
        if live:
            deadline = time.monotonic() + 120
            while not any(f" written={trades} " in ln for ln in list(tb.lines)):
                assert time.monotonic() < deadline and tb.proc.poll() is None, tb.text[-3000:]
                time.sleep(0.1)
            tb.proc.send_signal(signal.SIGTERM)
        rc = tb.wait(180)
    finally:
        served = replay.stop()
    assert rc == 0, tb.text[-3000:]
    assert "Traceback" not in tb.text
    assert os.listdir(spill_dir) == [], "spool files never outlive a clean exit"
    rss.thread.join(5)
    return tb, tb.final(), json.loads(out.read_text()), served, rss


def sent_in(served: str, trades: int) -> float:
    m = re.search(rf"sent {trades} trades in \d+ messages \(\d+ bytes\) in ([\d.]+) s", served)
    assert m, served[-2000:]
    return float(m.group(1))


def test_a_sleeping_worker_never_pauses_the_socket(tmp_path):
    # Scaled for the suite: 1M trades (~115 MB of records) behind --max-buffer 16M, a worker that
    # reads nothing for 4 s (tools/bench_spill.py measures 5M trades, 64M, 8 s: the same path).
    trades, bound, sleep = 1_000_000, 16 << 20, 4.0
    tb, final, got, served, rss = spill_run(
        tmp_path, trades, sleep, "--max-buffer", "16M", live=True
    )
    assert final["pauses"] == "0", "the socket was never paused"
    assert int(final["spilled_bytes"]) > 4 * bound, "most of the burst went through the spool"
    assert final["spool_bytes"] == "0" and float(final["spill_s"]) > 0
    assert final["routed"] == final["written"] == str(trades)
    assert final["undelivered_at_exit"] == "0"
    assert got["records"] == trades and got["in_order"] and got["duplicates"] == 0
    assert got["leftover"] == 0
    # tb's memory stays near the bound, below the ~115 MB burst (RSS counts no page cache): it
    # grows by the bound plus tb's working set under a burst (the receive arena, 16 MiB at the
    # default --max-message; the splice pool, up to 3 x 4 MiB; the router's scratch), which a
    # run whose queue held the burst would pass by the burst's size.
    stats = [ln for ln in tb.lines if ln.startswith("tb stats: ")]
    spooled = [int(re.search(r"spool_bytes=(\d+)", ln).group(1)) for ln in stats]
    assert max(spooled) > bound and spooled[-1] == 0, "spooled while asleep, drained while live"
    base, peak = rss.base, max(rss.samples)
    assert base and peak - base < bound + (64 << 20), (
        f"RSS grew {(peak - base) >> 20} MiB over a {bound >> 20} MiB bound"
    )


def test_max_spill_reached_falls_back_to_block_and_says_so(tmp_path):
    trades = 400_000  # ~46 MB of records: past 4M in memory + 16M spooled
    tb, final, got, served, _ = spill_run(
        tmp_path, trades, 3.0, "--max-buffer", "4M", "--max-spill", "16M"
    )
    assert int(final["pauses"]) >= 1
    assert re.search(
        r"the spool is full \(--max-spill 16 MiB\); \d+ MiB queued in memory \(bound 4 MiB\),"
        r" \d+ MiB spooled: pausing the socket until the worker catches up"
        r" \(--on-spill-full block\)",
        tb.text,
    ), tb.text[-3000:]
    assert int(final["spilled_bytes"]) >= 8 << 20
    assert final["routed"] == final["written"] == str(trades)
    assert got["records"] == trades and got["in_order"] and got["duplicates"] == 0


def test_max_spill_reached_with_on_spill_full_exit(tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    replay = Replay("--gen-profile", "burst", "--gen-trades", "200000")
    try:
        run = run_tb(
            ["run", replay.url, "--pipes", "2", "--key", "k", "--pipe-size", "64K",
             "--max-buffer", "1M", "--on-overflow", "spill", "--spill-dir", str(spill),
             "--max-spill", "4M", "--on-spill-full", "exit", "--overflow-timeout", "1",
             "--shutdown-timeout", "1", "--workdir", str(tmp_path),
             "--", sys.executable, "-c", "import time; time.sleep(60)"],
            timeout=60,
        )  # fmt: skip
    finally:
        replay.stop()
    assert run.returncode == 7, run.stderr[-2000:]
    assert "the spool is full (--max-spill 4 MiB)" in run.stderr
    assert "exiting (--on-spill-full exit)" in run.stderr and "Traceback" not in run.stderr
    final = dict(kv.split("=", 1) for kv in run.stderr.splitlines()[-1].split() if "=" in kv)
    # the sleeping worker got nothing: all of it is counted, not lost silently (the code stays 7)
    assert int(final["undelivered_at_exit"]) == int(final["routed"]) > 0
    assert os.listdir(spill) == []


def mount_tmpfs(path: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


def test_a_full_disk_keeps_every_record_and_says_so(tmp_path):
    small = tmp_path / "small"
    mount_tmpfs(small, "size=4m")
    try:
        trades = 300_000  # ~35 MB: far past 4M in memory + a 4 MiB disk
        tb, final, got, _, _ = spill_run(
            tmp_path, trades, 3.0, "--max-buffer", "4M", spill_dir=small
        )
    finally:
        subprocess.run(["umount", str(small)])
    assert re.search(
        r"cannot write \S+/tb-spool\.\d+\.\d: No space left on device; keeping what the spool"
        r" cannot take in memory \(up to --max-buffer, then the socket pauses\); nothing is dropped",
        tb.text,
    ), tb.text[-3000:]
    assert int(final["pauses"]) >= 1, "past the bound in memory: the block fallback"
    assert final["routed"] == final["written"] == str(trades)
    assert got["records"] == trades and got["in_order"] and got["duplicates"] == 0


def test_an_unusable_spill_directory_is_a_clear_error(tmp_path):
    base = ["run", "ws://127.0.0.1:9/", "--pipes", "2", "--key", "k", "--on-overflow", "spill"]
    run = run_tb([*base, "--spill-dir", str(tmp_path / "missing"), "--", "true"])
    assert run.returncode == 2
    assert f"--spill-dir {tmp_path / 'missing'} is not a directory" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    run = run_tb(["run", "ws://127.0.0.1:9/", "--pipes", "2", "--key", "k",
                  "--spill-dir", str(tmp_path), "--", "true"])  # fmt: skip
    assert run.returncode == 2 and "--spill-dir needs --on-overflow spill" in run.stderr
    ro = tmp_path / "ro"
    mount_tmpfs(ro, "size=1m,ro")
    try:
        run = run_tb([*base, "--spill-dir", str(ro), "--", "true"])
    finally:
        subprocess.run(["umount", str(ro)])
    assert run.returncode == 2, run.stderr
    assert f"cannot create files in --spill-dir {ro}: Read-only file system" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_stale_spool_from_a_killed_run_is_said_and_discarded(tmp_path, wait_for):
    spill = tmp_path / "spill"
    spill.mkdir()
    replay = Replay("--gen-profile", "burst", "--gen-trades", "300000")
    try:
        tb = LiveTb(["run", replay.url, "--pipes", "2", "--key", "k", "--max-buffer", "2M",
                     "--on-overflow", "spill", "--spill-dir", str(spill), "--workdir",
                     str(tmp_path), "--", sys.executable, "-c", "import time; time.sleep(60)"])  # fmt: skip

        def spooled() -> bool:
            return any(f.stat().st_size for f in spill.iterdir())

        wait_for(spooled, 30, "a spool with records in it")
        os.kill(tb.proc.pid, signal.SIGKILL)  # a crash: nothing cleans up
        tb.wait(10)
    finally:
        replay.stop()
    left = sorted(f.name for f in spill.iterdir())
    assert left and all(re.fullmatch(r"tb-spool\.\d+\.\d", n) for n in left)
    replay = Replay("--gen-profile", "quiet", "--gen-trades", "1000", "--close-after")
    try:
        run = run_tb(["run", replay.url, "--pipes", "2", "--key", "k", "--once",
                      "--on-overflow", "spill", "--spill-dir", str(spill), "--workdir",
                      str(tmp_path), "--", *COUNT_WORKER])  # fmt: skip
    finally:
        replay.stop()
    assert run.returncode == 0, run.stderr[-2000:]
    for name in left:
        assert re.search(
            rf"found a stale spool {re.escape(str(spill / name))} \(\d+ bytes\) left by a run that"
            r" did not exit cleanly; discarded",
            run.stderr,
        ), run.stderr[-2000:]
    assert os.listdir(spill) == []

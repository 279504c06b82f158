"""The edges of tb's process: signals for its whole process group, a worker that dies during the
shutdown flush, and a stderr that is closed or full. Real terminals (pty), real processes, real
pipes, a real `tb replay` on 127.0.0.1.

What must hold in every case: every record tb routed reaches a worker, in order per symbol, or
tb exits non-zero and its final line says how many did not (undelivered_at_exit).
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import run_tb, tb_cmd

from tb.capture import read_capture
from tb.counters import parse_line

EDGE_WORKER = str(Path(__file__).parent / "edge_worker.py")
REPEAT = 20  # the capture served this many times: a burst that outlasts the test's signal


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("cap") / "burst.tbcap"
    proc = run_tb(["gen", str(path), "--trades", "100000", "--symbols", "500", "--seed", "4"])
    assert proc.returncode == 0, proc.stderr
    sent: dict[str, list[str]] = {}
    for payload in read_capture(str(path)):
        for obj in json.loads(payload):
            sent.setdefault(obj["sym"], []).append(obj["i"])
    return path, sent


def env_without_keys() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("POLYGON_API_KEY", "MASSIVE_API_KEY")}


def worker_results(out: str) -> list[dict]:
    """What each worker of the run read, in the order they finished."""
    files = sorted(glob.glob(f"{out}.*.json"), key=os.path.getmtime)
    return [json.loads(Path(f).read_text()) for f in files]


def check_in_order(results: list[dict], sent: dict[str, list[str]], repeat: int) -> int:
    """Per symbol, the records the workers read, one worker after the other, are the feed's
    first ones for that symbol, in feed order. Returns how many records they read."""
    got: dict[str, list[str]] = {}
    for r in results:
        for sym, ids in r["ids"].items():
            got.setdefault(sym, []).extend(ids)
    for sym, ids in got.items():
        want = (sent[sym] * repeat)[: len(ids)]
        assert ids == want, f"{sym}: records out of order or missing"
    return sum(r["count"] for r in results)


def final_line(text: str) -> dict[str, str]:
    lines = [ln for ln in text.splitlines() if "tb: final" in ln]
    assert lines, f"no final line:\n{text[-3000:]}"
    return parse_line(lines[-1])


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def queued_in_stats(log: Path) -> bool:
    """A --stats line shows records queued for the worker: the burst is under way."""
    if not log.exists():
        return False  # (the child has not opened it yet)
    for ln in log.read_text(errors="replace").splitlines():
        if ln.startswith("tb stats:") and int(parse_line(ln).get("queued", "0")) > 0:
            return True
    return False


def run_args(url: str, out: str, workdir: Path, *extra: str, worker_args=()) -> list[str]:
    return ["run", url, "--pipes", "4", "--key", "k", "--once", "--stats", "0.1", "--max-buffer", "8M",
            "--workdir", str(workdir), *extra, "--", sys.executable, EDGE_WORKER, out,
            *worker_args]  # fmt: skip


def spawn_in_pty(args: list[str], stderr_path: Path) -> tuple[int, int]:
    """tb as the foreground job of a new terminal (pid, master fd); its stderr goes to a file."""
    pid, master = pty.fork()
    if pid == 0:  # the child: session leader, the pty its controlling terminal
        try:
            fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 2)
            cmd = tb_cmd(*args)
            os.execve(cmd[0], cmd, env_without_keys())
        finally:
            os._exit(127)
    return pid, master  # (tb writes nothing to the terminal: no need to read it)


def wait_status(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("tb did not exit")


def assert_delivered_after(text: str, rc: int, out: str, sent, what: str) -> None:
    """tb exited 0 mid-burst and the workers got every record it routed, in order."""
    assert rc == 0, text[-3000:]
    final = final_line(text)
    assert final["undelivered_at_exit"] == "0"
    assert int(final["routed"]) < 100000 * REPEAT, f"the burst ended before {what}"
    assert check_in_order(worker_results(out), sent, REPEAT) == int(final["routed"])


@pytest.mark.parametrize("how", ["ctrl-c", "terminal-closed"])
def test_a_terminal_stop_flushes_everything_to_a_worker_that_dies_on_sigint(
    tmp_path, capture, replay_factory, how
):
    """Ctrl-C signals the terminal's foreground process group; closing the terminal hangs it up
    (SIGHUP). Either way the worker, in a group of its own, gets everything tb routed."""
    path, sent = capture
    replay = replay_factory(str(path), "--repeat", str(REPEAT), "--close-after")
    out, log = str(tmp_path / "w"), tmp_path / "tb.log"
    pid, master = spawn_in_pty(run_args(replay.url, out, tmp_path), log)
    try:
        wait_until(lambda: queued_in_stats(log), 60, "records queued mid-burst")
        if how == "ctrl-c":
            os.write(master, b"\x03")
        else:
            os.close(master)
            master = -1
        rc = wait_status(pid, 60)
    finally:
        if master >= 0:
            os.close(master)
    text = log.read_text()
    assert_delivered_after(text, rc, out, sent, how)
    assert ("SIGINT" if how == "ctrl-c" else "SIGHUP") + ": stopping" in text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_to_the_whole_process_group(tmp_path, capture, replay_factory, signum):
    """systemd's KillMode=control-group, `docker stop` with a group-signalling init, kill -PGID."""
    path, sent = capture
    replay = replay_factory(str(path), "--repeat", str(REPEAT), "--close-after")
    out, log = str(tmp_path / "w"), tmp_path / "tb.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            tb_cmd(*run_args(replay.url, out, tmp_path)),
            stderr=err,
            env=env_without_keys(),
            start_new_session=True,  # tb leads a group of its own, as under a service manager
        )
    try:
        wait_until(lambda: queued_in_stats(log), 60, "records queued mid-burst")
        os.killpg(proc.pid, signum)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_delivered_after(log.read_text(), rc, out, sent, "the signal")


def flush_with_a_dying_worker(tmp_path, capture, replay_factory, *extra: str):
    """tb is stopped while its worker holds after 20,000 records with a queue behind it; once
    the flush is under way the worker exits 3. Returns (rc, log text, worker results)."""
    path, sent = capture
    replay = replay_factory(str(path), "--repeat", str(REPEAT), "--close-after")
    out, log, hold = str(tmp_path / "w"), tmp_path / "tb.log", tmp_path / "go"
    args = run_args(replay.url, out, tmp_path, *extra,
                    worker_args=["--exit-after", "20000", "--hold", str(hold)])  # fmt: skip
    with open(log, "w") as err:
        proc = subprocess.Popen(tb_cmd(*args), stderr=err, env=env_without_keys())
    try:
        wait_until(lambda: os.path.exists(out + ".died"), 60, "the worker to hold")
        wait_until(lambda: queued_in_stats(log), 60, "records queued behind the worker")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "flushing" in log.read_text(), 30, "the shutdown flush")
        hold.touch()  # the worker exits 3 mid-flush
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, log.read_text(), worker_results(out), sent


def test_a_worker_that_dies_during_the_flush_is_restarted_and_the_flush_completes(
    tmp_path, capture, replay_factory
):
    rc, text, results, sent = flush_with_a_dying_worker(tmp_path, capture, replay_factory)
    assert rc == 0, text[-3000:]
    final = final_line(text)
    assert "restarting the worker to finish the flush" in text
    assert final["undelivered_at_exit"] == "0" and final["lost_in_worker"] == "0"
    assert len(results) == 2 and results[0]["count"] == 20000
    assert check_in_order(results, sent, REPEAT) == int(final["routed"])


def test_with_restart_never_a_death_during_the_flush_exits_non_zero_and_counts_the_loss(
    tmp_path, capture, replay_factory
):
    rc, text, results, sent = flush_with_a_dying_worker(
        tmp_path, capture, replay_factory, "--restart", "never"
    )
    final = final_line(text)
    assert rc == 8, text[-3000:]  # (undelivered: the first reason, a signal, said "OK")
    routed = int(final["routed"])
    assert check_in_order(results, sent, REPEAT) == 20000
    assert int(final["undelivered_at_exit"]) == routed - 20000 > 0
    assert f"{routed - 20000} records tb routed were never delivered" in text


def test_a_stop_while_a_restart_is_due_still_restarts_and_completes_the_flush(
    tmp_path, capture, replay_factory
):
    """The worker died and its restart waits out the backoff (0.4 s after three deaths) when
    tb is stopped: the flush starts the restart itself rather than giving the records up."""
    path, sent = capture
    replay = replay_factory(str(path), "--repeat", str(REPEAT), "--close-after")
    out, log, hold = str(tmp_path / "w"), tmp_path / "tb.log", tmp_path / "go"
    hold.touch()  # (each dying worker exits as soon as it has read its records)
    args = run_args(replay.url, out, tmp_path,
                    worker_args=["--exit-after", "5000", "--hold", str(hold), "--deaths", "3"])  # fmt: skip
    with open(log, "w") as err:
        proc = subprocess.Popen(tb_cmd(*args), stderr=err, env=env_without_keys())
    try:
        wait_until(lambda: "restarting the worker in 0.4 s" in log.read_text(), 60, "a third death")
        proc.send_signal(signal.SIGTERM)  # within the 0.4 s before the restart
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "restarting the worker to finish the flush" in text
    final = final_line(text)
    assert final["undelivered_at_exit"] == "0" and final["lost_in_worker"] == "0"
    assert check_in_order(worker_results(out), sent, REPEAT) == int(final["routed"])


def test_a_worker_that_stops_reading_makes_the_exit_non_zero(tmp_path, capture, replay_factory):
    """A live worker that takes nothing at shutdown: after --shutdown-timeout tb gives up, and
    it says how many records never arrived (exit 8), instead of exiting 0."""
    path, _ = capture
    replay = replay_factory(str(path), "--close-after")
    script = "import time, sys; time.sleep(60)"
    proc = run_tb(
        ["run", replay.url, "--pipes", "2", "--key", "k", "--once", "--shutdown-timeout", "1",
         "--workdir", str(tmp_path), "--", sys.executable, "-c", script],
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 8, proc.stderr[-3000:]
    final = final_line(proc.stderr)
    assert int(final["undelivered_at_exit"]) == int(final["routed"]) == 100000


# -- stderr that is closed or full ------------------------------------------------------------


def trickle_run(tmp_path, capture, replay_factory, stderr_fd: int, *worker_args: str):
    path, sent = capture
    replay = replay_factory(str(path), "--rate", "100000", "--close-after")
    out = str(tmp_path / "w")
    args = ["run", replay.url, "--pipes", "4", "--key", "k", "--once", "--stats", "0.01",
            "-v", "--workdir", str(tmp_path), "--", sys.executable, EDGE_WORKER, out,
            *worker_args]  # fmt: skip
    proc = subprocess.Popen(tb_cmd(*args), stderr=stderr_fd, env=env_without_keys())
    return proc, out, sent


def test_a_closed_log_pipe_does_not_stop_the_ingest(tmp_path, capture, replay_factory):
    r, w = os.pipe()
    proc, out, sent = trickle_run(tmp_path, capture, replay_factory, w)
    os.close(w)
    got = b""
    while len(got) < 200:  # the log shipper reads a little, then goes away
        chunk = os.read(r, 200 - len(got))
        if not chunk:
            break
        got += chunk
    os.close(r)
    rc = proc.wait(60)
    assert rc == 0
    assert check_in_order(worker_results(out), sent, 1) == 100000


def test_a_full_stderr_neither_stalls_nor_stops_the_ingest(tmp_path, capture, replay_factory):
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)  # nobody reads it: full after a few lines
    hold = tmp_path / "go"
    # the worker reads everything, then waits (tb waits for it) until the test has emptied the
    # pipe, so the final line finds room
    proc, out, sent = trickle_run(tmp_path, capture, replay_factory, w,
                                  "--exit-after", "100000", "--hold", str(hold))  # fmt: skip
    os.close(w)
    try:
        wait_until(lambda: os.path.exists(out + ".died"), 60, "every trade at the worker")
        os.set_blocking(r, False)
        while True:
            try:
                if not os.read(r, 65536):
                    break
            except BlockingIOError:
                break
        os.set_blocking(r, True)
        hold.touch()
        rc = proc.wait(60)
        rest = b""
        while chunk := os.read(r, 65536):
            rest += chunk
    finally:
        os.close(r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = rest.decode(errors="replace")
    assert check_in_order(worker_results(out), sent, 1) == 100000
    final = final_line(text)
    assert int(final["log_write_errors"]) > 0
    assert final["routed"] == "100000" and final["undelivered_at_exit"] == "0"
    assert rc == 0  # (its exit 3 comes after EOF: the run was over, nothing undelivered)


def test_a_stderr_on_a_full_disk_does_not_stop_the_ingest(tmp_path, capture, replay_factory):
    """/dev/full answers every write with ENOSPC, as a log file on a full disk does."""
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        proc, out, sent = trickle_run(tmp_path, capture, replay_factory, fd)
    finally:
        os.close(fd)
    assert proc.wait(60) == 0
    assert check_in_order(worker_results(out), sent, 1) == 100000

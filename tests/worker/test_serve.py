"""serve() over real pipes: the split of the pipes, batches, a dead sub-worker, the signals.

The worker is tests/worker/serve_worker.py (a real process forking real sub-workers); this test
holds the write ends, so it decides when records arrive and when EOF comes.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tb.pipes import PipeError
from tb.worker import SequenceCheck, SubWorker, serve

SERVE_WORKER = str(Path(__file__).parent / "serve_worker.py")


def encode(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def record(pipe: int, k: int, q: int | None = None) -> bytes:
    sym = f"S{pipe}"
    return b'{"ev":"T","sym":"%s","k":%d,"q":%d}' % (sym.encode(), k, k if q is None else q)


class Worker:
    """serve_worker.py over `n` fresh pipes; the test writes the other ends."""

    def __init__(self, tmp_path: Path, n: int, *args: str) -> None:
        self.logdir = tmp_path / "logs"
        self.logdir.mkdir()
        pairs = [os.pipe() for _ in range(n)]
        self.writes = [w for _, w in pairs]
        reads = [r for r, _ in pairs]
        self.proc = subprocess.Popen(
            [sys.executable, SERVE_WORKER, str(self.logdir), *args, *map(str, reads)],
            pass_fds=reads,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in reads:
            os.close(r)

    def send(self, pipe: int, records: list[bytes]) -> None:
        data = b"".join(map(encode, records))
        view = memoryview(data)
        while view:  # (a blocking write end: waits while the pipe is full)
            view = view[os.write(self.writes[pipe], view) :]

    def close(self) -> None:
        for fd in self.writes:
            os.close(fd)
        self.writes = []

    def wait(self, timeout: float = 30) -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            pytest.fail(f"the worker did not finish: {err}")
        for fd in self.writes:
            os.close(fd)
        return self.proc.returncode, err

    def logs(self) -> dict[int, list[dict]]:
        """pid -> its lines (a torn last line of a killed sub-worker is left out)."""
        out = {}
        for path in self.logdir.glob("*.jsonl"):
            lines = []
            for text in path.read_text().splitlines():
                try:
                    lines.append(json.loads(text))
                except ValueError:
                    pass
            out[int(path.stem)] = lines
        return out

    def sub_pids(self, count: int, timeout: float = 10) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = self.logs()
            if len(logs) == count and all(lines for lines in logs.values()):
                return sorted(logs)
            time.sleep(0.01)
        pytest.fail(f"{count} sub-workers did not start: {self.logs()}")


def by_pipe(logs: dict[int, list[dict]]) -> tuple[dict[int, list[bytes]], dict[int, set[int]]]:
    got, readers = defaultdict(list), defaultdict(set)
    for pid, lines in logs.items():
        for line in lines:
            if "pipe" in line:
                got[line["pipe"]].append(line["raw"].encode())
                readers[line["pipe"]].add(pid)
    return got, readers


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("processes,npipes", [(1, 3), (2, 5), (4, 8), (4, 3)])
def test_every_record_once_each_pipe_read_by_one_process(tmp_path, processes, npipes, batch):
    args = ["--processes", str(processes)] + (["--batch"] if batch else [])
    w = Worker(tmp_path, npipes, *args)
    sent = {i: [record(i, k) for k in range(400)] for i in range(npipes)}
    for k in range(0, 400, 50):  # interleaved, in pieces
        for i in range(npipes):
            w.send(i, sent[i][k : k + 50])
    w.close()
    rc, err = w.wait()
    assert rc == 0, err
    logs = w.logs()
    assert len(logs) == min(processes, npipes)  # never more processes than pipes
    got, readers = by_pipe(logs)
    assert dict(got) == sent  # every record once, in its pipe's order
    assert all(len(pids) == 1 for pids in readers.values())
    for lines in logs.values():  # each sub-worker read its share: pipe i % K
        start, finish = lines[0], lines[-1]
        k = start["start"]
        assert start["pipes"] == [i for i in range(npipes) if i % len(logs) == k]
        assert finish == {"finish": k, "stopping": False, "records": len(lines) - 2}


def test_a_killed_sub_worker_stops_the_worker_non_zero(tmp_path):
    w = Worker(tmp_path, 4, "--processes", "2", "--batch")
    for i in range(4):
        w.send(i, [record(i, k) for k in range(100)])
    victim, other = w.sub_pids(2)
    os.kill(victim, signal.SIGKILL)
    rc, err = w.wait()
    assert rc == 1
    pipes = [ln for ln in w.logs()[victim] if "start" in ln][0]["pipes"]
    assert f"serve: sub-worker {pipes[0]} (pid {victim}, pipes {pipes[0]},{pipes[1]}) " in err
    assert "killed by signal 9 (SIGKILL)" in err
    assert "stopping the other 1 sub-workers; the worker exits with status 1" in err
    # the other one was stopped cleanly: it called finish, at a batch boundary
    last = w.logs()[other][-1]
    assert last["stopping"] is True and last["finish"] == 1 - pipes[0]
    assert "Traceback" not in err


def test_a_sub_worker_that_does_not_stop_is_killed_after_the_grace(tmp_path):
    w = Worker(tmp_path, 2, "--processes", "2", "--hang-on", "S1", "--grace", "0.5")
    w.send(0, [record(0, 0)])
    w.send(1, [record(1, 0)])
    victim, hanging = w.sub_pids(2)
    deadline = time.monotonic() + 10
    while not any("hanging" in ln for lines in w.logs().values() for ln in lines):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    if any("hanging" in ln for ln in w.logs()[victim]):
        victim, hanging = hanging, victim
    started = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    rc, err = w.wait(timeout=20)  # (not the 60 s the handler sleeps)
    assert rc == 1 and time.monotonic() - started < 20
    assert f"(pid {victim}, pipes " in err and "killed by signal 9" in err
    assert f"(pid {hanging}, pipes 1) killed by signal 9 (SIGKILL)" in err


def test_a_handler_that_raises_stops_the_worker_with_its_traceback(tmp_path):
    w = Worker(tmp_path, 2, "--processes", "2", "--batch", "--decode", "--fail-on", "S1")
    w.send(0, [record(0, k) for k in range(10)])
    w.send(1, [record(1, k) for k in range(10)])
    rc, err = w.wait()
    assert rc == 1
    assert "serve: sub-worker 1 (pid" in err and ") failed:" in err
    assert "RuntimeError: failing on S1 as asked" in err
    assert "serve: sub-worker 1 (pid" in err and "exited with status 1" in err


def test_sigterm_stops_every_sub_worker_cleanly(tmp_path):
    w = Worker(tmp_path, 3, "--processes", "3")
    for i in range(3):
        w.send(i, [record(i, 0)])
    pids = w.sub_pids(3)
    deadline = time.monotonic() + 10
    while sum(len(v) for v in w.logs().values()) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)  # (each has logged its start and its record)
    w.proc.send_signal(signal.SIGTERM)
    rc, err = w.wait()  # the write ends are still open: only the signal ends it
    assert rc == 0, err
    logs = w.logs()
    for pid in pids:
        assert logs[pid][-1]["stopping"] is True and logs[pid][-1]["records"] == 1


def test_sighup_reads_on_to_eof(tmp_path):
    """SIGHUP is tb's death signal: what tb wrote is still in the pipes, and EOF follows it."""
    w = Worker(tmp_path, 2, "--processes", "2", "--batch")
    w.send(0, [record(0, k) for k in range(50)])
    w.sub_pids(2)
    w.proc.send_signal(signal.SIGHUP)
    time.sleep(0.2)
    w.send(1, [record(1, k) for k in range(50)])
    w.close()
    rc, err = w.wait()
    assert rc == 0, err
    got, _ = by_pipe(w.logs())
    assert got == {i: [record(i, k) for k in range(50)] for i in range(2)}
    assert all(lines[-1]["stopping"] is False for lines in w.logs().values())


def test_sequence_anomalies_are_summed_over_the_sub_workers(tmp_path):
    w = Worker(tmp_path, 4, "--processes", "2", "--batch", "--sequence")
    for i in range(4):  # pipe i: i repeats and one step back
        w.send(i, [record(i, k) for k in range(1, 20)] + [record(i, 0, q=19)] * i)
        w.send(i, [record(i, 0, q=3)])
    w.close()
    rc, err = w.wait()
    assert rc == 0, err
    summary = json.loads((w.logdir / "sequence.json").read_text())
    assert summary == {"repeats": 0 + 1 + 2 + 3, "backwards": 4}


def test_in_process_serve_lets_the_handler_exception_through():
    r, w = os.pipe()
    os.write(w, encode(b"{}") + encode(b"[]"))
    os.close(w)
    seen = []

    def handler(pipe: int, rec: bytes) -> None:
        seen.append(rec)
        if rec == b"[]":
            raise KeyError("boom")

    try:
        with pytest.raises(KeyError, match="boom"):
            serve(handler, 1, fds=[r])
    finally:
        os.close(r)
    assert seen == [b"{}", b"[]"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_in_process_serve_calls_start_and_finish_and_stops_on_sigterm():
    r, w = os.pipe()
    os.write(w, encode(b'{"ev":"T","sym":"A","q":2}') + encode(b'{"ev":"T","sym":"A","q":2}'))
    calls, check = [], SequenceCheck()

    def handler(pipe: int, records: list) -> None:
        calls.append([bytes(x) for x in records])
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()

    try:
        rc = serve(handler, 1, batch=True, fds=[r], sequence=check, start=calls.append,
                   finish=calls.append)  # fmt: skip
    finally:
        os.close(r)
        os.close(w)
    assert rc == 0
    sub = SubWorker(0, 1, [0], records=2, stopping=True)
    assert calls == [sub, [b'{"ev":"T","sym":"A","q":2}'] * 2, sub]
    assert check.repeats == 1


def test_bad_arguments_are_clear_errors():
    with pytest.raises(PipeError, match="no pipes to read"):
        serve(print, fds=[])
    with pytest.raises(PipeError, match="-3 is not a file descriptor"):
        serve(print, 2, fds=[-3, 4])
    with pytest.raises(ValueError, match="processes must be 0"):
        serve(print, -1, fds=[0])
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(PipeError, match=f"pipe 1: fd {r} is not open in this process"):
        serve(print, 2, fds=[0, r])  # (before anything is forked)

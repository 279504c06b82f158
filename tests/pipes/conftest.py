"""Fixtures for the tb.pipes tests: pipes and processes that are always cleaned up."""

from __future__ import annotations

import os
import random
import stat
import struct
import subprocess
from collections.abc import Iterator

import pytest

from tb.pipes import PipeSet, Worker, open_pipes


def encode(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def record_pool(seed: int, n: int = 512, lo: int = 8, hi: int = 400) -> list[bytes]:
    """n framed records with JSON payloads of lo..hi bytes."""
    rng = random.Random(seed)
    pool = []
    for k in range(n):
        pad = "x" * rng.randint(0, max(0, hi - 40))
        payload = f'{{"ev":"T","sym":"S{k % 97}","i":"{k}","pad":"{pad}"}}'.encode()
        pool.append(encode(payload[: max(lo, len(payload))]))
    return pool


@pytest.fixture
def frame():
    """encode(payload) -> [u32 LE length][payload]."""
    return encode


@pytest.fixture
def pool():
    return record_pool


class _Pipes:
    def __init__(self) -> None:
        self._mine: list[tuple[int, int]] = []  # (fd, inode): close at teardown only if still ours

    def __call__(self, n: int, size: int | None = None) -> PipeSet:
        ps = open_pipes(n, size)
        for fd in ps.read_fds + ps.write_fds:
            self._mine.append((fd, os.fstat(fd).st_ino))
        return ps

    def cleanup(self) -> None:
        for fd, ino in self._mine:
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            if stat.S_ISFIFO(st.st_mode) and st.st_ino == ino:
                os.close(fd)


@pytest.fixture
def pipes() -> Iterator[_Pipes]:
    """pipes(n, size) -> PipeSet; every fd still open at the end of the test is closed."""
    p = _Pipes()
    yield p
    p.cleanup()


@pytest.fixture
def reap() -> Iterator[list]:
    """Append Workers or Popens here: any still running at the end are killed and reaped."""
    procs: list = []
    yield procs
    for proc in procs:
        popen = proc.popen if isinstance(proc, Worker) else proc
        if popen.poll() is None:
            popen.kill()
        try:
            popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        if isinstance(proc, Worker):
            proc.close()

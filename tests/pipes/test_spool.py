"""Spools and the PipeWriter's spilling, against real files, real pipes and a real tmpfs."""

from __future__ import annotations

import os
import select
import shutil
import struct
import subprocess

import pytest

from tb.loop.epoll import EpollLoop
from tb.pipes import PipeWriter
from tb.pipes.spool import SpoolError, open_spools, sweep_stale

SMALL = 65536


@pytest.fixture
def loop():
    lp = EpollLoop()
    yield lp
    lp.close()


def batch(pool, k: int, n: int = 40) -> tuple[bytes, int]:
    """The k-th run of n records (distinct bytes each time: order is checkable)."""
    recs = pool(k, n=n)
    return b"".join(recs), n


def read_all(w: PipeWriter, loop, fd: int, i: int = 0, rounds: int = 100000) -> bytes:
    """Read pipe i (read end `fd`) while the writer drains into it, until nothing is queued."""
    out = bytearray()
    for _ in range(rounds):
        while select.select([fd], [], [], 0)[0]:
            out += os.read(fd, 1 << 20)
        if not w.queued_bytes_per_pipe[i]:
            break
        loop.poll(0.01)
    while select.select([fd], [], [], 0)[0]:
        out += os.read(fd, 1 << 20)
    return bytes(out)


def test_spool_reads_back_whole_segments_in_order(tmp_path):
    (spool,) = open_spools(str(tmp_path), 1)
    parts = [bytes([65 + k]) * (1000 + k) for k in range(10)]
    for k, p in enumerate(parts):
        spool.append(p, k + 1)
    assert spool.size == sum(map(len, parts)) and spool.records == sum(range(1, 11))
    got, records = spool.read(2100)  # the first two segments fit, the third would not
    assert got == parts[0] + parts[1] and records == 1 + 2
    got, records = spool.read(1)  # at least one segment
    assert got == parts[2] and records == 3
    rest = b""
    while spool.size:
        data, _ = spool.read(1 << 20)
        rest += data
    assert rest == b"".join(parts[3:])
    assert os.fstat(spool.fd).st_size == 0, "an emptied spool is truncated"
    path = spool.path
    spool.close()
    assert not os.path.exists(path)


def test_stale_spools_are_found_and_removed_live_ones_are_not(tmp_path):
    live = open_spools(str(tmp_path), 2)
    # a run that died: its file is there, nobody holds its lock
    dead = tmp_path / "tb-spool.999999.0"
    dead.write_bytes(b"x" * 5000)
    (tmp_path / "unrelated").write_bytes(b"y")
    found = sweep_stale(str(tmp_path))
    assert found == [(str(dead), 5000)]
    assert not dead.exists()
    assert all(os.path.exists(s.path) for s in live), "a live run's spools are left alone"
    assert (tmp_path / "unrelated").exists()
    for s in live:
        s.close()
    assert sorted(os.listdir(tmp_path)) == ["unrelated"]


def test_a_directory_that_cannot_hold_spools_is_a_clear_error(tmp_path):
    with pytest.raises(SpoolError, match="not a directory"):
        open_spools(str(tmp_path / "missing"), 1)
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(SpoolError, match="not a directory"):
        open_spools(str(f), 1)


def test_writer_spills_past_the_bound_and_drains_in_order(loop, pipes, pool, tmp_path):
    ps = pipes(2, SMALL)
    bound = 256 << 10
    spools = open_spools(str(tmp_path), 2)
    w = PipeWriter(loop, ps.write_fds, max_buffer=bound, spools=spools, splice=False)
    sent = [bytearray(), bytearray()]
    total = 0
    for k in range(60):  # ~60 x 2 x 8 KiB: several times the bound, nobody reading
        a, na = batch(pool, 2 * k)
        b, nb = batch(pool, 2 * k + 1)
        w.submit([a, b], [na, nb])
        sent[0] += a
        sent[1] += b
        total += na + nb
        assert not w.over_limit(), "the spool has room: no reason to pause"
        memory = w.queued_bytes - w.spool_bytes
        assert memory <= bound + len(a) + len(b)
    assert w.spool_bytes > 0 and w.spilled_bytes >= w.spool_bytes
    assert sum(w.spool_bytes_per_pipe) == w.spool_bytes
    assert sum(w.written_records) + w.queued_records == total, "routed = written + queued"
    assert w.queued_records_in(0) + w.queued_records_in(1) == w.queued_records
    assert w.spill_s > 0
    got0 = read_all(w, loop, ps.read_fds[0])
    got1 = read_all(w, loop, ps.read_fds[1], 1)
    assert got0 == bytes(sent[0]) and got1 == bytes(sent[1]), "every byte once, in order"
    assert w.spool_bytes == 0 and w.queued_records == 0 and sum(w.written_records) == total
    for s in spools:
        assert os.fstat(s.fd).st_size == 0
    paths = [s.path for s in spools]
    w.close()
    assert not any(map(os.path.exists, paths)), "spool files never outlive the writer"


def test_new_runs_wait_behind_the_spool_even_when_memory_has_room(loop, pipes, pool, tmp_path):
    ps = pipes(1, SMALL)
    (spool,) = open_spools(str(tmp_path), 1)
    bound = 1 << 20
    w = PipeWriter(loop, ps.write_fds, max_buffer=bound, spools=[spool], splice=False)
    sent = bytearray()
    for k in range(200):
        run, n = batch(pool, k)
        w.submit([run], [n])
        sent += run
    assert spool.size
    # a little is read: memory falls under the bound, the spool still holds data
    got = bytearray(os.read(ps.read_fds[0], SMALL))
    loop.poll(0.01)
    memory = w.queued_bytes - w.spool_bytes
    run, n = batch(pool, 999, n=3)
    assert spool.size and memory + len(run) < bound
    before = w.spilled_bytes
    w.submit([run], [n])
    sent += run
    assert w.spilled_bytes == before + len(run), "a new run goes behind the spool, not before"
    got += read_all(w, loop, ps.read_fds[0])
    assert bytes(got) == bytes(sent)
    w.close()


def test_max_spill_keeps_records_in_memory_and_then_holds_the_bound(loop, pipes, pool, tmp_path):
    ps = pipes(1, SMALL)
    (spool,) = open_spools(str(tmp_path), 1)
    bound, cap = 64 << 10, 128 << 10
    w = PipeWriter(loop, ps.write_fds, max_buffer=bound, spools=[spool], max_spill=cap)
    sent = bytearray()
    over = False
    for k in range(80):
        run, n = batch(pool, k)
        w.submit([run], [n])
        sent += run
        over = over or w.over_limit()
    assert w.spool_bytes <= cap
    assert "--max-spill" in w.spill_refused
    assert over and w.over_limit(), "the spool is full and memory holds the bound: pause"
    got = read_all(w, loop, ps.read_fds[0])
    assert got == bytes(sent), "nothing dropped, order kept (memory after the spool)"
    assert not w.over_limit() and w.spill_refused == ""
    w.close()


def test_resync_after_a_reader_death_with_a_spool(loop, pipes, pool, tmp_path):
    ps = pipes(1, SMALL)
    (spool,) = open_spools(str(tmp_path), 1)
    w = PipeWriter(loop, ps.write_fds, max_buffer=32 << 10, spools=[spool], splice=False)
    recs = pool(7, n=2000)
    sent = b"".join(recs)
    for k in range(0, 2000, 50):
        w.submit([b"".join(recs[k : k + 50])], [50])
    assert spool.size
    # the reader takes a piece that ends inside a record, then dies
    first = os.read(ps.read_fds[0], 1000)
    lost = w.resync(0, ps.read_fds[0])
    assert lost == 1
    rest = read_all(w, loop, ps.read_fds[0])
    # what arrives is the stream minus the torn record, in order
    ends, pos = [], 0
    while pos < len(sent):
        pos += 4 + struct.unpack_from("<I", sent, pos)[0]
        ends.append(pos)
    cut = next(e for e in ends if e > len(first))
    start = ends[ends.index(cut) - 1] if ends.index(cut) else 0
    assert first[:start] + rest == sent[:start] + sent[cut:]
    assert sum(w.written_records) == 2000 and w.queued_records == 0
    w.close()


def test_flush_at_shutdown_drains_the_spool(loop, pipes, pool, tmp_path):
    ps = pipes(1, SMALL)
    (spool,) = open_spools(str(tmp_path), 1)
    w = PipeWriter(loop, ps.write_fds, max_buffer=32 << 10, spools=[spool], splice=False)
    sent = bytearray()
    for k in range(40):
        run, n = batch(pool, k)
        w.submit([run], [n])
        sent += run
    assert spool.size
    out = tmp_path / "out"
    with open(out, "wb") as f:
        reader = subprocess.Popen(["cat"], stdin=ps.read_fds[0], stdout=f)  # a real reader
    assert w.flush(30)
    w.close()
    os.close(ps.read_fds[0])
    reader.wait(30)
    assert out.read_bytes() == bytes(sent)
    assert w.queued_records == 0 and w.spool_bytes == 0


def _tmpfs(path, size: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a small tmpfs")
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


def test_a_full_disk_keeps_the_records_in_memory_and_says_so(loop, pipes, pool, tmp_path, caplog):
    small = tmp_path / "small"
    _tmpfs(small, "256k")
    try:
        ps = pipes(1, SMALL)
        (spool,) = open_spools(str(small), 1)
        w = PipeWriter(loop, ps.write_fds, max_buffer=64 << 10, spools=[spool], splice=False)
        sent = bytearray()
        for k in range(100):  # ~800 KiB: the tmpfs fills
            run, n = batch(pool, k)
            w.submit([run], [n])
            sent += run
        assert "No space left on device" in w.spill_refused
        assert "No space left on device" in caplog.text and "nothing is dropped" in caplog.text
        assert w.over_limit()
        got = read_all(w, loop, ps.read_fds[0])
        assert got == bytes(sent)
        w.close()
    finally:
        subprocess.run(["umount", str(small)])


def test_spool_append_that_fails_leaves_the_file_whole(tmp_path):
    small = tmp_path / "small"
    _tmpfs(small, "64k")
    try:
        (spool,) = open_spools(str(small), 1)
        spool.append(b"a" * 40000, 1)
        with pytest.raises(OSError):
            spool.append(b"b" * 60000, 1)
        assert spool.size == 40000 and spool.records == 1
        assert spool.read(1 << 20) == (b"a" * 40000, 1)
        spool.close()
    finally:
        subprocess.run(["umount", str(small)])

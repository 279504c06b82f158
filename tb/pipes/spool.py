"""One pipe's overflow on disk: an append-only file, read back in the order it was written.

Theory of operation. With `--on-overflow spill`, a run that would take the writer's memory queue
past --max-buffer goes to its pipe's spool instead, and so does everything after it for that pipe
until the spool is empty again (the spool's bytes are newer than the pipe's memory queue and older
than anything submitted later). Each append is one pwrite at the file's tail of whole records:
one batch's run for the pipe, remembered as a segment (its size and record count), so reading
back never walks the records' headers. When the pipe's memory queue runs low, whole segments
are read from the head (one pread) and queued behind it. An emptied spool is truncated to nothing;
a long-lived one has its consumed prefix punched out (FALLOC_FL_PUNCH_HOLE where the file system
can), so the disk holds about what is still to be read.

A spool is named `tb-spool.<pid>.<pipe>` in the spill directory and holds an exclusive flock on
itself for as long as its run lives; close() removes it. A file of that name whose lock anyone can
take belongs to a run that died without closing it (a crash, SIGKILL): sweep_stale() removes it
and says what it held. Its records are not replayed: the dead run's memory queue, which came
before them, is gone, and the pipe count or hash may differ now.

Errors (ENOSPC, EIO, ...) are raised to the caller as OSError with the spool's file unchanged:
an append that fails part-way is cut off again, so the file always holds whole segments.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
from collections import deque

from tb.pipes.errors import PipeError

__all__ = ["Spool", "SpoolError", "check_dir", "open_spools", "sweep_stale", "SPOOL_NAME"]

SPOOL_NAME = re.compile(r"^tb-spool\.(\d+)\.(\d+)$")  # pid, pipe
_PUNCH_EVERY = 64 << 20  # free the consumed prefix once this much more of it was read
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


class SpoolError(PipeError):
    """The spill directory cannot hold spools (missing, not writable, not a directory)."""


def _load_fallocate():
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()


class Spool:
    """An append-only file of whole-record segments for one pipe, read back in order."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.head = 0  # file offset of the first byte not read back
        self.tail = 0  # file offset where the next append goes
        self.punched = 0  # the prefix already given back to the file system
        self.segments: deque[tuple[int, int]] = deque()  # (bytes, records), oldest first
        self.records = 0  # records in the file, not read back

    @property
    def size(self) -> int:
        """Bytes in the file not read back yet."""
        return self.tail - self.head

    def append(self, data, records: int) -> None:
        """Write `data` (whole records, `records` of them) at the tail. OSError if the file
        system refuses (nothing of it stays in the file then)."""
        n = len(data)
        view = memoryview(data)
        done = 0
        try:
            while done < n:
                done += os.pwrite(self.fd, view[done:], self.tail + done)
        except OSError:
            if done:
                try:
                    os.ftruncate(self.fd, self.tail)
                except OSError:
                    pass  # (the bytes past tail are never read: the segments say where data ends)
            raise
        finally:
            view.release()
        self.tail += n
        self.segments.append((n, records))
        self.records += records

    def read(self, most: int) -> tuple[bytes, int]:
        """The oldest whole segments, `most` bytes of them at most (at least one segment), and
        their record count; (b"", 0) when empty."""
        segments = self.segments
        if not segments:
            return b"", 0
        size, records = segments.popleft()
        while segments and size + segments[0][0] <= most:
            s, r = segments.popleft()
            size += s
            records += r
        data = os.pread(self.fd, size, self.head)
        while len(data) < size:  # (a regular file returns short only at its end: not here)
            more = os.pread(self.fd, size - len(data), self.head + len(data))
            if not more:
                raise OSError(f"spool {self.path} is shorter than what was written to it")
            data += more
        self.head += size
        self.records -= records
        if not segments:
            self._empty()
        elif self.head - self.punched >= _PUNCH_EVERY:
            self._punch()
        return data, records

    def _empty(self) -> None:
        self.head = self.tail = self.punched = 0
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass  # (the space comes back when the file is removed)

    def _punch(self) -> None:
        if _fallocate is not None:
            flags = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
            if _fallocate(self.fd, flags, self.punched, self.head - self.punched) == 0:
                self.punched = self.head

    def disk_bytes(self) -> int:
        """Bytes the file takes on disk (its allocated blocks)."""
        return os.fstat(self.fd).st_blocks * 512

    def close(self) -> None:
        """Remove the file and close it (again: nothing)."""
        if self.fd < 0:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = -1
        self.segments.clear()
        self.head = self.tail = self.records = 0


def check_dir(path: str, what: str = "--spill-dir") -> None:
    """SpoolError unless `path` (named `what` in the message) is a directory this process can
    create files in."""
    if not os.path.isdir(path):
        raise SpoolError(f"{what} {path} is not a directory")
    probe = os.path.join(path, f".tb-spool-probe.{os.getpid()}")
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise SpoolError(f"cannot create files in {what} {path}: {exc.strerror}") from None
    os.close(fd)
    os.unlink(probe)


def open_spools(directory: str, n: int) -> list[Spool]:
    """One new, locked spool per pipe in `directory`. SpoolError if it cannot hold them."""
    check_dir(directory, "the spill directory")
    spools: list[Spool] = []
    pid = os.getpid()
    try:
        for i in range(n):
            path = os.path.join(directory, f"tb-spool.{pid}.{i}")
            # Created under another name and locked before it takes its own: a sweep by another
            # run never sees it unlocked.
            temp = path + ".new"
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(temp, path)
            except OSError:
                os.close(fd)
                raise
            spools.append(Spool(fd, path))
    except OSError as exc:
        for spool in spools:
            spool.close()
        raise SpoolError(
            f"cannot create a spool in --spill-dir {directory}: {exc.strerror}"
        ) from None
    return spools


def sweep_stale(directory: str) -> list[tuple[str, int]]:
    """Remove the spools in `directory` that no live run holds; [(path, bytes it held)].

    A spool another live tb holds (its lock is taken) is left alone."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        if not SPOOL_NAME.match(name):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run's
            size = os.fstat(fd).st_size
            os.unlink(path)
            found.append((path, size))
        except OSError:
            continue
        finally:
            os.close(fd)
    return found

"""Opening the N pipes between the balancer and its worker.

Each pipe is made with O_CLOEXEC (only spawn_worker's pass_fds lets the worker inherit a read end).
The write ends are O_NONBLOCK: the balancer must never block on a slow worker. The read ends stay
blocking, because the balancer's copy shares its open file description (and so its O_NONBLOCK
flag) with the worker's copy, and a worker written for blocking reads must not see EAGAIN.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

from tb.pipes.errors import PipeError

__all__ = ["PipeSet", "open_pipes", "pipe_max_size"]

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_PAGE = 4096
_FALLBACK_MAX = 1 << 20


@dataclass(slots=True)
class PipeSet:
    """The pipes' fds, index i = pipe i, and the capacity every pipe got (the smallest granted)."""

    read_fds: list[int]
    write_fds: list[int]
    size: int


def pipe_max_size() -> int:
    """/proc/sys/fs/pipe-max-size: the largest F_SETPIPE_SZ an unprivileged process may ask for."""
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_MAX


def _grow(fd: int, want: int) -> int:
    """Ask for `want` bytes of capacity, halving on EPERM/EBUSY; return what the pipe has now."""
    while want >= _PAGE:
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, want)
            break
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EBUSY):
                raise
            want //= 2  # over pipe-max-size or the user's pipe-user-pages limit
    return fcntl.fcntl(fd, F_GETPIPE_SZ)


def open_pipes(n: int, size: int | None = None) -> PipeSet:
    """Open `n` pipes: CLOEXEC, nonblocking write ends, blocking read ends.

    size: capacity to ask for per pipe; None means /proc/sys/fs/pipe-max-size. A request the kernel
    refuses is halved until it is accepted (later pipes start from what the previous one got).
    Raises PipeError, after closing every fd it opened, if a pipe cannot be made.
    """
    if n < 1:
        raise PipeError(f"need at least one pipe, not {n}")
    if size is not None and size < 1:
        raise PipeError(f"pipe size must be positive, not {size}")
    want = pipe_max_size() if size is None else size
    read_fds: list[int] = []
    write_fds: list[int] = []
    granted: list[int] = []
    try:
        for _ in range(n):
            r, w = os.pipe2(os.O_CLOEXEC)
            read_fds.append(r)
            write_fds.append(w)
            fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
            got = _grow(w, want)
            granted.append(got)
            want = min(want, got)  # a refused size is not retried for every pipe
    except OSError as exc:
        for fd in read_fds + write_fds:
            os.close(fd)
        raise PipeError(f"cannot open pipe {len(granted)} of {n}: {exc.strerror}") from None
    except BaseException:
        for fd in read_fds + write_fds:
            os.close(fd)
        raise
    return PipeSet(read_fds=read_fds, write_fds=write_fds, size=min(granted))
